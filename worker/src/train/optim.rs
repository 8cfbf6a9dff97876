//! AdamW with decoupled weight decay and global gradient-norm clipping. candle-nn has an AdamW, but it
//! keeps its moment estimates private, and a resumable run must save them: a resumed run restarting
//! from zero moments takes a few hundred steps of outsized updates and is no longer the same run.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to matrices and convolution kernels only, not to biases and norm scales.
    pub weight_decay: f64,
    /// The largest global L2 norm of the gradients; larger ones are scaled down to it.
    pub clip_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.01, clip_norm: 1.0 }
    }
}

/// The optimiser over a fixed, named set of variables.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Each variable's learning rate as a multiple of the one a step is given.
    lr_scales: Vec<f64>,
    step: usize,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let zeros = |p: &Var| p.zeros_like();
        let m = params.iter().map(|(_, p)| zeros(p)).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, p)| zeros(p)).collect::<Result<_>>()?;
        let lr_scales = vec![1.0; params.len()];
        Ok(AdamW { cfg, params, m, v, lr_scales, step: 0 })
    }

    /// Gives each variable `scale(name)` times the learning rate a step is given (1 for all by default).
    pub fn scale_lr(&mut self, scale: impl Fn(&str) -> f64) {
        self.lr_scales = self.params.iter().map(|(name, _)| scale(name)).collect();
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update at learning rate `lr`; returns the gradients' global norm before clipping. A variable
    /// without a gradient (unused by this loss) is left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        // One sum on the device and one read back (a read per variable stalls a GPU as often).
        let mut squares = Vec::new();
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p) {
                squares.push(g.sqr()?.sum_all()?);
            }
        }
        let norm = if squares.is_empty() {
            0.0
        } else {
            (Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt()
        };
        if !norm.is_finite() {
            candle_core::bail!("the gradient norm is {norm}: training diverged");
        }
        let clip = if norm > self.cfg.clip_norm { self.cfg.clip_norm / norm } else { 1.0 };
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.cfg;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let g = (g * clip)?;
            self.m[i] = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            self.v[i] = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + eps)?)?;
            let lr = lr * self.lr_scales[i];
            let decayed =
                if p.rank() >= 2 { (p.as_tensor() * (1.0 - lr * weight_decay))? } else { p.as_tensor().clone() };
            p.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    /// The moments by name (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`state`](Self::state) after `steps` updates.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                let t = state.get(&key).ok_or_else(|| candle_core::Error::CannotFindTensor { path: key.clone() })?;
                if t.shape() != p.shape() {
                    candle_core::bail!("optimiser state `{key}` is {:?}, the parameter {:?}", t.shape(), p.shape());
                }
                *slot = t.to_device(p.device())?;
            }
        }
        self.step = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A variable's learning-rate scale multiplies its step: 0 holds it still, 3 moves it three times as
    /// far as a variable of scale 1 on the same gradient.
    #[test]
    fn lr_scales_apply_per_variable() -> Result<()> {
        let dev = Device::Cpu;
        let vars: Vec<Var> = (0..3).map(|_| Var::zeros(2, candle_core::DType::F32, &dev)).collect::<Result<_>>()?;
        let names = ["a", "b", "c"];
        let cfg = AdamWConfig { weight_decay: 0.0, clip_norm: 100.0, ..Default::default() };
        let mut opt = AdamW::new(names.iter().map(|n| n.to_string()).zip(vars.iter().cloned()).collect(), cfg)?;
        opt.scale_lr(|name| match name {
            "a" => 1.0,
            "b" => 0.0,
            _ => 3.0,
        });
        let target = Tensor::new(&[1f32, -1.0], &dev)?;
        let loss = vars.iter().map(|v| (v.as_tensor() - &target)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
        let loss = Tensor::stack(&loss, 0)?.sum_all()?;
        opt.step(&loss.backward()?, 0.01)?;
        let moved: Vec<f32> = vars.iter().map(|v| v.as_tensor().get(0)?.to_scalar::<f32>()).collect::<Result<_>>()?;
        assert!((moved[0] - 0.01).abs() < 1e-6 && moved[1] == 0.0 && (moved[2] - 0.03).abs() < 1e-6, "{moved:?}");
        Ok(())
    }

    #[test]
    fn minimises_a_quadratic_and_resumes_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let target = Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &dev)?;
        let run = |steps: usize, resume_at: Option<usize>| -> Result<Vec<Vec<f32>>> {
            let w = Var::zeros((2, 2), candle_core::DType::F32, &dev)?;
            let cfg = AdamWConfig { weight_decay: 0.0, clip_norm: 100.0, ..Default::default() };
            let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
            for s in 0..steps {
                if Some(s) == resume_at {
                    // A fresh optimiser from the saved moments must continue the same trajectory.
                    let state = opt.state();
                    opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
                    opt.restore(&state, s)?;
                }
                let loss = (w.as_tensor() - &target)?.sqr()?.sum_all()?;
                opt.step(&loss.backward()?, 0.05)?;
            }
            w.as_tensor().to_vec2()
        };
        let straight = run(400, None)?;
        assert_eq!(straight, run(400, Some(150))?);
        let err: f32 = straight.concat().iter().zip([1f32, -2.0, 0.5, 3.0]).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 1e-2, "{straight:?}");
        Ok(())
    }
}
