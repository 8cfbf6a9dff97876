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
            }
        }
        for (k, (p, q)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            for c in 0..n {
                let (a, b) = (latent(p, c), latent(q, c));
                let mean_signal = (signal(a)? + signal(b)?) / 2.0;
                shape[k] += distance(a, b)? / mean_signal / (scenes * n) as f64;
            }
        }
    }
    let shape =
        [(0, 1), (0, 2), (1, 2)].into_iter().zip(shape).map(|((p, q), d)| (Shape::ALL[p], Shape::ALL[q], d)).collect();
    Ok(LatentSeparation { colours, colour, shape, scenes })
}

/// The normalised latent of each scene, one tensor each.
fn encode(vae: &WanVae, scenes: &[Scene], frames: usize) -> Result<Vec<Tensor>> {
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
    }
}
