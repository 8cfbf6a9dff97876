//! Prompt embeddings, kept between denoise requests: a job asks for the same prompts at every step of every
//! window, and encoding them is the text encoder's whole cost.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use candle_core::Tensor;

/// A bounded map from prompt text to its embeddings; the oldest entry goes first.
#[derive(Debug)]
pub struct PromptCache {
    capacity: usize,
    inner: Mutex<(HashMap<String, Tensor>, VecDeque<String>)>,
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// The embeddings of `prompt`, computed by `encode` on a miss. Two threads missing the same prompt at
    /// once both encode it; the result is the same.
    pub fn get_or_insert<E>(&self, prompt: &str, encode: impl FnOnce() -> Result<Tensor, E>) -> Result<Tensor, E> {
        if let Some(hit) = self.lock().0.get(prompt) {
            return Ok(hit.clone());
        }
        let value = encode()?;
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        if map.insert(prompt.to_string(), value.clone()).is_none() {
            order.push_back(prompt.to_string());
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(value)
    }

    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Tensor>, VecDeque<String>)> {
        // A panic while holding the lock leaves the map consistent (every write is one insert or remove).
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hits_skip_the_encoder_and_old_entries_go() {
        let cache = PromptCache::new(2);
        let t = |v: f32| Tensor::new(&[v], &Device::Cpu).map_err(|e| e.to_string());
        let mut calls = 0;
        for prompt in ["a", "a", "b", "c", "a"] {
            cache
                .get_or_insert(prompt, || {
                    calls += 1;
                    t(calls as f32)
                })
                .unwrap();
        }
        // "a" twice (the first hit skipped), "b", "c", then "a" again after eviction.
        assert_eq!(calls, 4);
        assert_eq!(cache.len(), 2);
    }
}
