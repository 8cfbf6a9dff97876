//! RGB → YUV 4:2:0 → H.264 with OpenH264, regrouped into MP4-ready samples.

use super::VideoError;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, QpRange, RateControlMode,
    SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::{OpenH264API, Timestamp};

const NAL_IDR_SLICE: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Floor of the rate-control target: small videos would otherwise get a budget so tight that
/// colours smear, and the farm's clips are short enough that size barely matters.
const MIN_BITRATE: u64 = 1_000_000;
/// Ceiling that keeps the target inside OpenH264's `int` and within what level 5.2 decoders accept.
const MAX_BITRATE: u64 = 200_000_000;

/// An H.264 elementary stream in the shape MP4 wants: parameter sets apart, pictures as samples.
pub(super) struct H264Stream {
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    pub samples: Vec<Sample>,
}

/// One access unit (one picture): its NAL units, each behind a 4-byte big-endian length.
pub(super) struct Sample {
    pub data: Vec<u8>,
    /// IDR pictures are where a player may start decoding, so they go into the `stss` table.
    pub is_sync: bool,
}

/// An OpenH264 encoder fed one frame at a time; it keeps the compressed pictures and one YUV
/// scratch frame, never the RGB input. `Send`: the `openh264` crate declares its `Encoder` Send
/// (OpenH264 keeps no thread-local state), so a caller may move it between pushes.
pub(super) struct H264Encoder {
    encoder: Encoder,
    width: usize,
    height: usize,
    fps: u32,
    yuv: Vec<u8>,
    stream: H264Stream,
}

impl H264Encoder {
    /// Starts an encoder for a size and frame rate that `check_fps` and `check_size` have already accepted.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        let pixels_per_second = u64::from(width) * u64::from(height) * u64::from(fps);
        let bitrate = (pixels_per_second / 2).clamp(MIN_BITRATE, MAX_BITRATE);
        let config = EncoderConfig::new()
            // Threads would split work differently from run to run; one thread keeps output byte-exact.
            .num_threads(1)
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .bitrate(BitRate::from_bps(bitrate as u32))
            // Quality mode beat constant QP 26 (`Off`, whose QP the crate cannot set) by ~2 dB PSNR on
            // smooth test content. Without frame skipping OpenH264 prints one harmless warning per video
            // to stderr ("bitrate can't be controlled"), before its log level can be lowered.
            .rate_control_mode(RateControlMode::Quality)
            // A skipped frame would leave the MP4 short of frames and shift every later one in time.
            .skip_frames(false)
            // Background detection lets slowly moving objects freeze for a frame now and then (13 of
            // 2,400 frame steps of slow procedural objects did), which reads as a stutter and as a
            // jump in the evaluator's motion measurements.
            .background_detection(false)
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::High)
            // Below QP 10 bits go to detail no one sees; above 32 blocking shows on busy scenes.
            .qp(QpRange::new(10, 32))
            // Baseline: no B-frames (decode order = display order, no ctts) and every player decodes it.
            .profile(Profile::Baseline)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // A keyframe every two seconds keeps seeking cheap without bloating short clips.
            .intra_frame_period(IntraFramePeriod::from_num_frames(2 * fps))
            // Tells players the matrix used by `rgb_to_i420`, so colours come back as rendered.
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| VideoError::Encoder(format!("cannot create encoder: {e}")))?;
        let (width, height) = (width as usize, height as usize);
        Ok(Self {
            encoder,
            width,
            height,
            fps,
            yuv: vec![0u8; width * height * 3 / 2],
            stream: H264Stream { sps: Vec::new(), pps: Vec::new(), samples: Vec::new() },
        })
    }

    /// Pictures encoded so far.
    pub fn frames(&self) -> usize {
        self.stream.samples.len()
    }

    /// Encodes one picture from RGB data whose length `check_frame` has already checked.
    pub fn encode(&mut self, rgb: &[u8]) -> Result<(), VideoError> {
        let (w, h) = (self.width, self.height);
        let index = self.stream.samples.len();
        rgb_to_i420(rgb, w, h, &mut self.yuv);
        let (y, uv) = self.yuv.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        let source = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        // Timestamps from the frame index, never the clock: OpenH264's rate control reads them.
        let millis = index as u64 * 1000 / u64::from(self.fps);
        let bitstream = self
            .encoder
            .encode_at(&source, Timestamp::from_millis(millis))
            .map_err(|e| VideoError::Encoder(format!("frame {index}: {e}")))?;
        let mut sample = Sample { data: Vec::new(), is_sync: false };
        for layer_index in 0..bitstream.num_layers() {
            let Some(layer) = bitstream.layer(layer_index) else { continue };
            for nal_index in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(nal_index) else { continue };
                add_nal(&mut self.stream, &mut sample, strip_start_code(nal)?)?;
            }
        }
        if sample.data.is_empty() {
            return Err(VideoError::Encoder(format!("frame {index}: the encoder produced no picture")));
        }
        if index == 0 && !sample.is_sync {
            return Err(VideoError::Encoder("the first frame is not an IDR picture".into()));
        }
        self.stream.samples.push(sample);
        Ok(())
    }

    /// Hands over the stream once it holds what the `avcC` box needs.
    pub fn finish(self) -> Result<H264Stream, VideoError> {
        if self.stream.sps.len() < 4 || self.stream.pps.is_empty() {
            return Err(VideoError::Encoder("the encoder emitted no SPS/PPS".into()));
        }
        Ok(self.stream)
    }
}

/// Routes one NAL unit: parameter sets belong in the `avcC` box, not in samples, where some
/// players would choke on them; everything else joins the current picture.
fn add_nal(stream: &mut H264Stream, sample: &mut Sample, nal: &[u8]) -> Result<(), VideoError> {
    let Some(&header) = nal.first() else { return Ok(()) };
    let target = match header & 0x1f {
        NAL_SPS => &mut stream.sps,
        NAL_PPS => &mut stream.pps,
        kind => {
            sample.is_sync |= kind == NAL_IDR_SLICE;
            let len = u32::try_from(nal.len()).map_err(|_| VideoError::Encoder("NAL unit over 4 GiB".into()))?;
            sample.data.extend_from_slice(&len.to_be_bytes());
            sample.data.extend_from_slice(nal);
            return Ok(());
        }
    };
    // Every IDR repeats the parameter sets; `avcC` holds one copy, so a change would break decoding.
    if target.is_empty() {
        target.extend_from_slice(nal);
    } else if target.as_slice() != nal {
        return Err(VideoError::Encoder("the encoder changed its SPS/PPS mid-stream".into()));
    }
    Ok(())
}

/// OpenH264 writes Annex-B (start-code delimited) units; MP4 wants the bare unit.
fn strip_start_code(nal: &[u8]) -> Result<&[u8], VideoError> {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .ok_or_else(|| VideoError::Encoder("encoder output lacks an Annex-B start code".into()))
}

/// BT.601 limited-range RGB → I420 in integer arithmetic, so the bytes cannot depend on the CPU
/// (the `openh264` crate's converter uses `f32` and picks a SIMD path per machine). Chroma is the
/// mean of each 2×2 block, which is what the even-size rule is for.
pub(super) fn rgb_to_i420(rgb: &[u8], width: usize, height: usize, out: &mut [u8]) {
    let (luma, chroma) = out.split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(width * height / 4);
    for (y, row) in rgb.chunks_exact(width * 3).enumerate() {
        for (x, px) in row.chunks_exact(3).enumerate() {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            luma[y * width + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    let half_width = width / 2;
    for cy in 0..height / 2 {
        for cx in 0..half_width {
            let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let at = ((2 * cy + dy) * width + 2 * cx + dx) * 3;
                r += i32::from(rgb[at]);
                g += i32::from(rgb[at + 1]);
                b += i32::from(rgb[at + 2]);
            }
            // Sums of four pixels: the extra >> 2 folds the averaging into the rounding shift.
            let u = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128;
            let v = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128;
            u_plane[cy * half_width + cx] = u.clamp(0, 255) as u8;
            v_plane[cy * half_width + cx] = v.clamp(0, 255) as u8;
        }
    }
}
