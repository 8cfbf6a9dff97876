//! What the coordinator knows of a model: its latent geometry, native window and defaults. Nothing here
//! touches weights; workers report this for the model they loaded.

use crate::pb;
use crate::spec::FieldError;

/// The name of the embedded default model.
pub const DEFAULT_MODEL: &str = "tiny";

/// A model's latent geometry and the defaults of a job that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGeometry {
    pub name: String,
    pub latent_channels: usize,
    /// Video frames per latent frame (after the first, which stands alone) and pixels per latent pixel.
    pub temporal_factor: usize,
    pub spatial_factor: usize,
    /// The transformer's patch in latent units: frames, rows, cols.
    pub patch: [usize; 3],
    /// The window the model was trained on, in video frames and pixels.
    pub native_frames: usize,
    pub native_width: usize,
    pub native_height: usize,
    pub default_steps: usize,
    pub default_guidance_scale: f64,
    pub default_shift: f64,
    pub default_fps: usize,
}

impl ModelGeometry {
    /// Wan2.1's VAE and patching with the given native window and defaults.
    fn wan(name: &str, native: [usize; 3], steps: usize, guidance: f64, shift: f64, fps: usize) -> Self {
        Self {
            name: name.to_string(),
            latent_channels: 16,
            temporal_factor: 4,
            spatial_factor: 8,
            patch: [1, 2, 2],
            native_frames: native[0],
            native_width: native[1],
            native_height: native[2],
            default_steps: steps,
            default_guidance_scale: guidance,
            default_shift: shift,
            default_fps: fps,
        }
    }

    /// The embedded tiny model: 17 frames of 64×64 natively.
    pub fn tiny() -> Self {
        Self::wan(DEFAULT_MODEL, [17, 64, 64], 20, 5.0, 3.0, 8)
    }

    /// Wan2.1 text-to-video 1.3B: 81 frames at 832×480, 50 steps, guidance 5, shift 3 (diffusers' example).
    pub fn wan2_1_t2v_1_3b() -> Self {
        Self::wan("wan2.1-t2v-1.3b", [81, 832, 480], 50, 5.0, 3.0, 16)
    }

    /// Wan2.1 text-to-video 14B: 81 frames at 1280×720, 50 steps, guidance 5, shift 5.
    pub fn wan2_1_t2v_14b() -> Self {
        Self::wan("wan2.1-t2v-14b", [81, 1280, 720], 50, 5.0, 5.0, 16)
    }

    /// The models every coordinator knows without a worker having reported them.
    pub fn presets() -> Vec<Self> {
        vec![Self::tiny(), Self::wan2_1_t2v_1_3b(), Self::wan2_1_t2v_14b()]
    }

    /// The latent frames of `frames` video frames (1 + 4k frames make 1 + k latent frames).
    pub fn latent_frames(&self, frames: usize) -> usize {
        (frames - 1) / self.temporal_factor + 1
    }

    /// The video frames that `latent_frames` latent frames decode to.
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        (latent_frames - 1) * self.temporal_factor + 1
    }

    /// What a frame's width must be a multiple of: a whole number of patches of latent pixels.
    pub fn width_multiple(&self) -> usize {
        self.spatial_factor * self.patch[2]
    }

    /// What a frame's height must be a multiple of.
    pub fn height_multiple(&self) -> usize {
        self.spatial_factor * self.patch[1]
    }
}

impl From<&ModelGeometry> for pb::ModelInfo {
    fn from(g: &ModelGeometry) -> Self {
        let u = |v: usize| v as u32;
        Self {
            name: g.name.clone(),
            latent_channels: u(g.latent_channels),
            temporal_factor: u(g.temporal_factor),
            spatial_factor: u(g.spatial_factor),
            patch_frames: u(g.patch[0]),
            patch_height: u(g.patch[1]),
            patch_width: u(g.patch[2]),
            native_frames: u(g.native_frames),
            native_width: u(g.native_width),
            native_height: u(g.native_height),
            default_steps: u(g.default_steps),
            default_guidance_scale: g.default_guidance_scale as f32,
            default_shift: g.default_shift as f32,
            default_fps: u(g.default_fps),
        }
    }
}

impl TryFrom<&pb::ModelInfo> for ModelGeometry {
    type Error = FieldError;

    /// Checks what a worker reports before the coordinator plans with it.
    fn try_from(m: &pb::ModelInfo) -> Result<Self, FieldError> {
        let positive = |field: &str, v: u32| {
            if v == 0 {
                Err(FieldError::new(format!("model.{field}"), "must be positive"))
            } else {
                Ok(v as usize)
            }
        };
        if m.name.trim().is_empty() {
            return Err(FieldError::new("model.name", "must not be empty"));
        }
        let geometry = Self {
            name: m.name.clone(),
            latent_channels: positive("latent_channels", m.latent_channels)?,
            temporal_factor: positive("temporal_factor", m.temporal_factor)?,
            spatial_factor: positive("spatial_factor", m.spatial_factor)?,
            patch: [
                positive("patch_frames", m.patch_frames)?,
                positive("patch_height", m.patch_height)?,
                positive("patch_width", m.patch_width)?,
            ],
            native_frames: positive("native_frames", m.native_frames)?,
            native_width: positive("native_width", m.native_width)?,
            native_height: positive("native_height", m.native_height)?,
            default_steps: positive("default_steps", m.default_steps)?,
            default_guidance_scale: m.default_guidance_scale as f64,
            default_shift: m.default_shift as f64,
            default_fps: positive("default_fps", m.default_fps)?,
        };
        if geometry.patch[0] != 1 {
            return Err(FieldError::new("model.patch_frames", "only a temporal patch of 1 is supported"));
        }
        if !(geometry.native_frames - 1).is_multiple_of(geometry.temporal_factor) {
            return Err(FieldError::new("model.native_frames", "must be 1 + a multiple of temporal_factor"));
        }
        let (wm, hm) = (geometry.width_multiple(), geometry.height_multiple());
        if !geometry.native_width.is_multiple_of(wm) || !geometry.native_height.is_multiple_of(hm) {
            return Err(FieldError::new("model.native_width", format!("native sizes must be multiples of {wm}x{hm}")));
        }
        if !(geometry.default_shift.is_finite() && geometry.default_shift > 0.0) {
            return Err(FieldError::new("model.default_shift", "must be positive"));
        }
        Ok(geometry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_the_wire() {
        for preset in ModelGeometry::presets() {
            let wire = pb::ModelInfo::from(&preset);
            assert_eq!(ModelGeometry::try_from(&wire).unwrap(), preset);
        }
    }

    #[test]
    fn bad_reports_name_their_field() {
        let mut wire = pb::ModelInfo::from(&ModelGeometry::tiny());
        wire.native_frames = 18;
        assert!(ModelGeometry::try_from(&wire).unwrap_err().to_string().contains("model.native_frames"));
        wire = pb::ModelInfo::from(&ModelGeometry::tiny());
        wire.spatial_factor = 0;
        assert!(ModelGeometry::try_from(&wire).unwrap_err().to_string().contains("model.spatial_factor"));
    }

    #[test]
    fn frame_counts_follow_the_vae() {
        let g = ModelGeometry::wan2_1_t2v_1_3b();
        assert_eq!(g.latent_frames(81), 21);
        assert_eq!(g.video_frames(21), 81);
        assert_eq!(g.latent_frames(1), 1);
        assert_eq!((g.width_multiple(), g.height_multiple()), (16, 16));
    }
}
