//! Trainable parameters for any model built from a `VarBuilder`: the model code asks for its tensors by
//! name and shape as it does when loading a checkpoint, and gets variables, created on first request
//! from a seeded initialisation or taken from a saved training state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::model::random::RandomWeights;

/// Where a parameter's first value comes from.
pub enum Start {
    /// Seeded random values ([`RandomWeights`]); names for which `zero` says so start at zero.
    Random { seed: u64, zero: fn(&str) -> bool },
    /// Saved values, by name (a resumed run, or a finished component).
    Saved(HashMap<String, Tensor>),
}

/// The variables of one model, by name (the checkpoint's keys).
pub struct Params {
    start: Start,
    vars: Mutex<BTreeMap<String, Var>>,
}

impl Params {
    pub fn new(start: Start) -> Self {
        Params { start, vars: Mutex::new(BTreeMap::new()) }
    }

    /// A `VarBuilder` that hands out this set's variables (f32, on `device`).
    pub fn var_builder(self: &std::sync::Arc<Self>, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Shared(self.clone())), DType::F32, device.clone())
    }

    /// Every variable, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        lock(&self.vars).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The current values, detached from any graph, by name (what a checkpoint or an export writes).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        lock(&self.vars).iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    /// The saved values no variable has taken (after the model was built): a saved set meant for a
    /// larger model.
    pub fn unused(&self) -> Vec<String> {
        let vars = lock(&self.vars);
        let mut names: Vec<String> = match &self.start {
            Start::Saved(saved) => saved.keys().filter(|k| !vars.contains_key(*k)).cloned().collect(),
            Start::Random { .. } => Vec::new(),
        };
        names.sort();
        names
    }

    /// The number of scalar parameters.
    pub fn count(&self) -> usize {
        lock(&self.vars).values().map(|v| v.elem_count()).sum()
    }

    fn get(&self, shape: Shape, name: &str, device: &Device) -> Result<Tensor> {
        let mut vars = lock(&self.vars);
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("parameter `{name}` asked for as {shape:?} but is {:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let init = match &self.start {
            Start::Random { zero, .. } if zero(name) => Tensor::zeros(shape.clone(), DType::F32, device)?,
            Start::Random { seed, .. } => {
                RandomWeights::new(*seed).get(shape.clone(), name, Init::Const(0.), DType::F32, device)?
            }
            Start::Saved(saved) => {
                let t = saved.get(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
                if t.shape() != &shape {
                    candle_core::bail!("saved parameter `{name}` is {:?}, the model wants {shape:?}", t.shape());
                }
                t.to_dtype(DType::F32)?.to_device(device)?
            }
        };
        let var = Var::from_tensor(&init)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }
}

struct Shared(std::sync::Arc<Params>);

impl SimpleBackend for Shared {
    fn get(&self, shape: Shape, name: &str, _hint: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if dtype != DType::F32 {
            candle_core::bail!("training runs in f32, `{name}` was asked for in {dtype:?}");
        }
        self.0.get(shape, name, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, dev: &Device) -> Result<Tensor> {
        match lock(&self.0.vars).get(name) {
            Some(var) => Ok(var.as_tensor().to_device(dev)?),
            None => candle_core::bail!("parameter `{name}` needs a shape"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.0.start {
            Start::Saved(saved) => saved.contains_key(name) || lock(&self.0.vars).contains_key(name),
            Start::Random { .. } => true,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
