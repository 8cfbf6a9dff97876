//! How far apart a VAE's latent puts objects that differ in colour only.
//!
//! The transformer learns with a mean squared error on the (normalised) latent, so two colours whose
//! latents lie close cost it little to confuse, and a transformer short of training draws a colour
//! between them. This measures that distance: for each of a few procedural scenes (one object on black,
//! so every colour stands out), the scene is rendered once per object colour and once without the object,
//! and encoded. The distance of colours `a` and `b` is ‖z(a) − z(b)‖ divided by the mean of ‖z(a) − z(∅)‖
//! and ‖z(b) − z(∅)‖: the part of the object's own latent signal that tells the two colours apart,
//! averaged over the scenes. The same ratio for the object's shapes gives a yardstick.

use candle_core::{Device, Tensor};
use patchwork_scenes::{Background, BackgroundColour, Colour, Scene, SceneSampler, Shape};

use super::data;
use crate::model::vae::WanVae;
use crate::model::Result;

/// Distances between the object colours in a VAE's normalised latent (see the module's documentation).
#[derive(Debug, Clone)]
pub struct LatentSeparation {
    pub colours: Vec<Colour>,
    /// `colours.len()²` distances, symmetric, row-major, zero on the diagonal.
    pub colour: Vec<f64>,
    /// The same distance between an object's shapes (circle–square, circle–triangle, square–triangle),
    /// averaged over the scenes and colours.
    pub shape: Vec<(Shape, Shape, f64)>,
    pub scenes: usize,
    /// Second moments (`z × z`, row-major) over the latent positions of the scenes, of the differences
    /// between two colours' latents, between two shapes' latents, and of the object's own signal (its
    /// latent less the empty scene's): which directions of the latent's channels tell colours apart.
    pub colour_moment: Vec<f64>,
    pub shape_moment: Vec<f64>,
    pub signal_moment: Vec<f64>,
}

impl LatentSeparation {
    /// The distance between colours `a` and `b`.
    pub fn between(&self, a: Colour, b: Colour) -> f64 {
        let n = self.colours.len();
        let index = |c: Colour| self.colours.iter().position(|&x| x == c).expect("every object colour is measured");
        self.colour[index(a) * n + index(b)]
    }

    /// The two colours the latent holds closest together, and their distance.
    pub fn closest(&self) -> (Colour, Colour, f64) {
        let mut best = (self.colours[0], self.colours[1], f64::INFINITY);
        for (i, &a) in self.colours.iter().enumerate() {
            for &b in &self.colours[i + 1..] {
                let d = self.between(a, b);
                if d < best.2 {
                    best = (a, b, d);
                }
            }
        }
        best
    }

    /// How much of each kind of difference lies in the directions (of the latent's channels) that hold most
    /// of the colour differences: for the `k` strongest eigenvectors of [`Self::colour_moment`], the share
    /// of the colour differences', the shape differences' and the object signal's energy along them, and
    /// the share `k / z` a direction-less vector would have. Where colour shares its directions with the
    /// signal, a loss that weighs latent directions cannot single colour out.
    pub fn directions(&self) -> Vec<DirectionShare> {
        let z = (self.colour_moment.len() as f64).sqrt() as usize;
        let (_, vectors) = symmetric_eigen(&self.colour_moment, z);
        let energy = |moment: &[f64], k: usize| {
            let total: f64 = (0..z).map(|i| moment[i * z + i]).sum();
            let along: f64 = vectors[..k]
                .iter()
                .map(|v| (0..z).map(|i| (0..z).map(|j| v[i] * moment[i * z + j] * v[j]).sum::<f64>()).sum::<f64>())
                .sum();
            along / total
        };
        (1..=z.min(6))
            .map(|k| DirectionShare {
                directions: k,
                colour: energy(&self.colour_moment, k),
                shape: energy(&self.shape_moment, k),
                signal: energy(&self.signal_moment, k),
                even: k as f64 / z as f64,
            })
            .collect()
    }

    /// [`Self::directions`] as a markdown table.
    pub fn directions_table(&self) -> String {
        let mut out = String::from(
            "| strongest colour directions | colour differences | shape differences | object signal | any direction |\n\
             | --- | --- | --- | --- | --- |",
        );
        for d in self.directions() {
            out += &format!(
                "\n| {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
                d.directions,
                100.0 * d.colour,
                100.0 * d.shape,
                100.0 * d.signal,
                100.0 * d.even
            );
        }
        out + "\n"
    }

    /// A markdown table of the colour distances, then the shapes'.
    pub fn table(&self) -> String {
        let mut out = String::from("| |");
        for c in &self.colours {
            out += &format!(" {} |", c.name());
        }
        out += "\n| --- |";
        out += &" --- |".repeat(self.colours.len());
        for &a in &self.colours {
            out += &format!("\n| {} |", a.name());
            for &b in &self.colours {
                out += &format!(" {:.2} |", self.between(a, b));
            }
        }
        out += "\n\n| shapes | distance |\n| --- | --- |";
        for (a, b, d) in &self.shape {
            out += &format!("\n| {}–{} | {d:.2} |", a.name(), b.name());
        }
        out + "\n"
    }
}

/// The shares of energy along the strongest colour directions (see [`LatentSeparation::directions`]).
#[derive(Debug, Clone, Copy)]
pub struct DirectionShare {
    pub directions: usize,
    pub colour: f64,
    pub shape: f64,
    pub signal: f64,
    /// What a vector spread evenly over all directions would have.
    pub even: f64,
}

/// Eigenvalues and unit eigenvectors of the symmetric `n × n` matrix `m` (row-major), strongest first, by
/// cyclic Jacobi rotations.
fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut a = m.to_vec();
    let mut v: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q].
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order.iter().map(|&i| (0..n).map(|k| v[k * n + i]).collect()).collect();
    (values, vectors)
}

/// Measures `vae` on `scenes` procedural scenes of `width`×`height`, `frames` long (1 + 4k).
pub fn latent_separation(
    vae: &WanVae,
    width: usize,
    height: usize,
    frames: usize,
    scenes: usize,
) -> Result<LatentSeparation> {
    let colours = Colour::ALL.to_vec();
    let n = colours.len();
    let sampler = SceneSampler::new(width, height);
    let mut colour = vec![0.0; n * n];
    let mut shape = vec![0.0; 3];
    let z_dim = vae.config().z_dim;
    let (mut colour_moment, mut shape_moment, mut signal_moment) =
        (vec![0.0; z_dim * z_dim], vec![0.0; z_dim * z_dim], vec![0.0; z_dim * z_dim]);
    for seed in 0..scenes as u64 {
        let mut base = sampler.sample(seed);
        base.background = Background::Plain(BackgroundColour::Black);
        base.objects.truncate(1);
        let with = |colour: Colour, shape: Shape| {
            let mut s = base.clone();
            s.objects[0].colour = colour;
            s.objects[0].shape = shape;
            s
        };
        let mut empty = base.clone();
        empty.objects.clear();
        let mut list: Vec<Scene> = vec![empty];
        for &s in &Shape::ALL {
            list.extend(colours.iter().map(|&c| with(c, s)));
        }
        let z = encode(vae, &list, frames)?;
        let latent = |shape_index: usize, colour_index: usize| &z[1 + shape_index * n + colour_index];
        let signal = |a: &Tensor| distance(a, &z[0]);
        let shape_of_base = Shape::ALL.iter().position(|&s| s == base.objects[0].shape).unwrap_or(0);
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (latent(shape_of_base, i), latent(shape_of_base, j));
                let mean_signal = (signal(a)? + signal(b)?) / 2.0;
                colour[i * n + j] += distance(a, b)? / mean_signal / scenes as f64;
                if i < j {
                    accumulate(&mut colour_moment, &(a - b)?)?;
                }
            }
            accumulate(&mut signal_moment, &(latent(shape_of_base, i) - &z[0])?)?;
        }
        for (k, (p, q)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            for c in 0..n {
                let (a, b) = (latent(p, c), latent(q, c));
                let mean_signal = (signal(a)? + signal(b)?) / 2.0;
                shape[k] += distance(a, b)? / mean_signal / (scenes * n) as f64;
                accumulate(&mut shape_moment, &(a - b)?)?;
            }
        }
    }
    let shape =
        [(0, 1), (0, 2), (1, 2)].into_iter().zip(shape).map(|((p, q), d)| (Shape::ALL[p], Shape::ALL[q], d)).collect();
    Ok(LatentSeparation { colours, colour, shape, scenes, colour_moment, shape_moment, signal_moment })
}

/// Adds `d dᵀ` over the positions of `d` (`[z, …]`) to `moment` (`z × z`).
fn accumulate(moment: &mut [f64], d: &Tensor) -> Result<()> {
    let z = d.dim(0)?;
    let d = d.to_dtype(candle_core::DType::F64)?.reshape((z, ()))?;
    let m = d.matmul(&d.t()?)?.flatten_all()?.to_vec1::<f64>()?;
    for (acc, v) in moment.iter_mut().zip(m) {
        *acc += v;
    }
    Ok(())
}

/// The normalised latent of each scene, one tensor each.
pub(super) fn encode(vae: &WanVae, scenes: &[Scene], frames: usize) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(scenes.len());
    for batch in scenes.chunks(8) {
        let videos: Vec<_> = batch.iter().map(|s| s.render(frames)).collect();
        let x = data::video_batch(&videos, &Device::Cpu)?.to_device(vae.device())?.to_dtype(vae.dtype())?;
        let z = vae.normalize(&vae.encode(&x)?)?;
        for i in 0..batch.len() {
            out.push(z.get(i)?);
        }
    }
    Ok(out)
}

fn distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ComponentDir;
    use candle_core::DType;

    /// The shipped tiny VAE, measured on two scenes: distances are symmetric and zero only on the diagonal,
    /// and hue is what orders them: yellow lies nearer orange than blue, and cyan nearer blue than red.
    #[test]
    fn shipped_vae_orders_colours_by_hue() {
        let dir = ComponentDir::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny/vae")).unwrap();
        let vae = WanVae::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let s = latent_separation(&vae, 64, 64, 5, 2).unwrap();
        assert_eq!(s.scenes, 2);
        for &a in &s.colours {
            assert_eq!(s.between(a, a), 0.0);
            for &b in &s.colours {
                assert!((s.between(a, b) - s.between(b, a)).abs() < 1e-9);
                if a != b {
                    assert!(s.between(a, b) > 0.0, "{a:?}–{b:?}");
                }
            }
        }
        assert!(s.between(Colour::Yellow, Colour::Orange) < s.between(Colour::Yellow, Colour::Blue));
        assert!(s.between(Colour::Cyan, Colour::Blue) < s.between(Colour::Cyan, Colour::Red));
        let (a, b, d) = s.closest();
        assert!(d <= s.between(Colour::Yellow, Colour::Orange) && a != b);
        assert!(s.shape.iter().all(|&(p, q, d)| p != q && d > 0.0));
        let table = s.table();
        assert!(table.contains("| yellow |") && table.contains("circle–square"), "{table}");
        // Shares grow with the directions taken and stay within [0, 1]; the strongest colour directions
        // hold more of the colour differences than an even spread would.
        let shares = s.directions();
        assert_eq!(shares.len(), 6);
        for pair in shares.windows(2) {
            assert!(pair[1].colour >= pair[0].colour - 1e-9 && pair[1].signal >= pair[0].signal - 1e-9);
        }
        for d in &shares {
            for v in [d.colour, d.shape, d.signal] {
                assert!((-1e-9..=1.0 + 1e-9).contains(&v), "{d:?}");
            }
            assert!(d.colour > d.even, "{d:?}");
        }
        assert!(s.directions_table().contains("| 4 |"));
    }

    #[test]
    fn jacobi_finds_the_eigenvectors_of_a_symmetric_matrix() {
        let m = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (values, vectors) = symmetric_eigen(&m, 3);
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        assert!((values.iter().sum::<f64>() - 12.0).abs() < 1e-9, "the trace is kept");
        for (lambda, v) in values.iter().zip(&vectors) {
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i * 3 + j] * v[j]).sum();
                assert!((mv - lambda * v[i]).abs() < 1e-9, "{lambda} {v:?}");
            }
            assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let dot: f64 = (0..3).map(|i| vectors[0][i] * vectors[1][i]).sum();
        assert!(dot.abs() < 1e-9);
    }
}
