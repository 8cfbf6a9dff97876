//! A stand-in model for measuring the control plane: every evaluation waits a fixed time and returns
//! zeros. Only `patchwork worker --load-test-delay` selects it; it is never a default.

use std::time::Duration;

use patchwork_shared::model::ModelGeometry;

use super::{DecodeInput, DenoiseInput, Evaluator, Frames};
use crate::model::ModelError;

#[derive(Debug)]
pub struct LoadTest {
    geometry: ModelGeometry,
    delay: Duration,
}

impl LoadTest {
    /// Pretends to be `geometry`'s model, taking `delay` per evaluation.
    pub fn new(geometry: ModelGeometry, delay: Duration) -> Self {
        Self { geometry, delay }
    }
}

impl Evaluator for LoadTest {
    fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    fn denoise(&self, input: &DenoiseInput) -> Result<Vec<f32>, ModelError> {
        std::thread::sleep(self.delay);
        Ok(vec![0.0; input.latent.len()])
    }

    fn decode(&self, input: &DecodeInput) -> Result<Frames, ModelError> {
        std::thread::sleep(self.delay);
        let [_, f, h, w] = input.shape;
        let g = &self.geometry;
        let frames =
            if input.context_frames == 0 { g.video_frames(f) } else { (f - input.context_frames) * g.temporal_factor };
        let shape = [frames, h * g.spatial_factor, w * g.spatial_factor, 3];
        Ok(Frames { shape, data: vec![128; shape.iter().product()] })
    }
}
