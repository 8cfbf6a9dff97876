//! Reads the first video track of an MP4 straight from its bytes.
//!
//! The bytes may come from anywhere, so this is a small bounds-checked box walker rather than
//! `mp4`'s reader: `mp4` 0.14 loops forever on a zero-sized box inside `moov`, and its
//! `read_sample` can panic or divide by zero on inconsistent sample tables.

use super::{Mp4Info, VideoError};
use std::ops::Range;

/// The parts of a video track that probing and decoding need, still borrowed from the file.
pub(super) struct VideoTrack<'a> {
    /// The sample entry's type, e.g. `avc1`.
    pub codec: [u8; 4],
    /// The sample entry's payload; for `avc1` it carries the `avcC` box.
    pub entry: &'a [u8],
    pub width: u32,
    pub height: u32,
    timescale: u32,
    stbl: &'a [u8],
}

/// What an MP4 holds, read back from its bytes (for tests and the CLI): its first video track.
pub fn probe_mp4(bytes: &[u8]) -> Result<Mp4Info, VideoError> {
    let track = first_video_track(bytes)?;
    let mut stts = Fields::new(child(track.stbl, b"stts")?, "stts");
    stts.skip(4)?;
    let (mut counted, mut ticks) = (0u64, 0u64);
    for _ in 0..stts.u32()? {
        let (count, delta) = (u64::from(stts.u32()?), u64::from(stts.u32()?));
        counted = counted.saturating_add(count);
        ticks = ticks.saturating_add(count * delta);
    }
    if ticks == 0 || track.timescale == 0 {
        return Err(VideoError::Parse("the video track has no duration, so no frame rate".into()));
    }
    let mut stsz = Fields::new(child(track.stbl, b"stsz")?, "stsz");
    stsz.skip(8)?;
    Ok(Mp4Info {
        width: track.width,
        height: track.height,
        frames: u64::from(stsz.u32()?),
        // Exact for the files `encode_mp4` writes: both counts are integers far below 2^53.
        fps: counted as f64 * f64::from(track.timescale) / ticks as f64,
        codec: String::from_utf8_lossy(&track.codec).into_owned(),
    })
}

/// "First" in file order, as players pick their default track.
pub(super) fn first_video_track(file: &[u8]) -> Result<VideoTrack<'_>, VideoError> {
    let moov = child(file, b"moov")?;
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        let mdia = child(trak, b"mdia")?;
        let mut hdlr = Fields::new(child(mdia, b"hdlr")?, "hdlr");
        hdlr.skip(8)?;
        if hdlr.take(4)? != b"vide" {
            continue;
        }
        let mut mdhd = Fields::new(child(mdia, b"mdhd")?, "mdhd");
        // Version 1 widens the creation and modification times to 64 bits.
        let times = if mdhd.u8()? == 1 { 16 } else { 8 };
        mdhd.skip(3 + times)?;
        let timescale = mdhd.u32()?;
        let stbl = child(child(mdia, b"minf")?, b"stbl")?;
        // stsd: version/flags and an entry count, then the entries, each shaped like a box.
        let stsd = child(stbl, b"stsd")?;
        let entries = stsd.get(8..).ok_or_else(|| truncated("stsd"))?;
        let (codec, entry) = children(entries)?.into_iter().next().ok_or_else(|| truncated("stsd"))?;
        // A visual sample entry: 24 bytes of reserved and indexes, then width and height.
        let mut fields = Fields::new(entry, "visual sample entry");
        fields.skip(24)?;
        let (width, height) = (u32::from(fields.u16()?), u32::from(fields.u16()?));
        return Ok(VideoTrack { codec, entry, width, height, timescale, stbl });
    }
    Err(VideoError::Unsupported("the file has no video track".into()))
}

/// Byte range of every sample in the file, from the stsz/stsc/stco (or co64) tables.
pub(super) fn sample_ranges(track: &VideoTrack<'_>, file_len: usize) -> Result<Vec<Range<usize>>, VideoError> {
    let bad = |what: &str| VideoError::Parse(format!("inconsistent sample tables: {what}"));
    let mut stsz = Fields::new(child(track.stbl, b"stsz")?, "stsz");
    stsz.skip(4)?;
    let (fixed, count) = (stsz.u32()? as usize, stsz.u32()? as usize);
    // Checked before anything is allocated for `count`: without a size table it is unbounded.
    if count > file_len || count.checked_mul(fixed).is_none_or(|total| total > file_len) {
        return Err(bad("stsz describes more data than the file holds"));
    }
    let mut stsc = Fields::new(child(track.stbl, b"stsc")?, "stsc");
    stsc.skip(4)?;
    let mut runs = Vec::new();
    for _ in 0..stsc.u32()? {
        let (first_chunk, per_chunk) = (stsc.u32()?, stsc.u32()?);
        stsc.skip(4)?;
        runs.push((u64::from(first_chunk), per_chunk as usize));
    }
    let (offsets, wide) = match child(track.stbl, b"stco") {
        Ok(stco) => (stco, false),
        Err(_) => (child(track.stbl, b"co64").map_err(|_| bad("no stco or co64 box"))?, true),
    };
    let mut offsets = Fields::new(offsets, "chunk offsets");
    offsets.skip(4)?;
    let chunk_count = offsets.u32()?;

    let mut run = 0;
    let mut ranges = Vec::with_capacity(count.min(1 << 16));
    for chunk in 1..=u64::from(chunk_count) {
        if ranges.len() == count {
            break;
        }
        while runs.get(run + 1).is_some_and(|&(first_chunk, _)| first_chunk <= chunk) {
            run += 1;
        }
        let per_chunk = runs.get(run).ok_or_else(|| bad("empty stsc"))?.1;
        let offset = if wide { offsets.u64()? } else { u64::from(offsets.u32()?) };
        let mut at = usize::try_from(offset).map_err(|_| bad("chunk offset past the file"))?;
        for _ in 0..per_chunk.min(count - ranges.len()) {
            let size = if fixed > 0 { fixed } else { stsz.u32()? as usize };
            let end = at.checked_add(size).filter(|&end| end <= file_len);
            let end = end.ok_or_else(|| bad("a sample runs past the end of the file"))?;
            ranges.push(at..end);
            at = end;
        }
    }
    if ranges.len() != count {
        return Err(bad("the chunks hold fewer samples than stsz lists"));
    }
    Ok(ranges)
}

/// Boxes as (type, payload) pairs, in file order.
type Boxes<'a> = Vec<([u8; 4], &'a [u8])>;

/// The child boxes of `level`: a whole file or a container's payload.
pub(super) fn children(level: &[u8]) -> Result<Boxes<'_>, VideoError> {
    let mut boxes = Vec::new();
    let mut fields = Fields::new(level, "box header");
    // Fewer than 8 bytes cannot hold a box: old QuickTime writers pad containers with a zero word.
    while fields.rest.len() >= 8 {
        let size = fields.u32()?;
        let kind: [u8; 4] = [fields.u8()?, fields.u8()?, fields.u8()?, fields.u8()?];
        let payload_len = match size {
            // A size of 0 means "to the end", 1 that a 64-bit size follows the type.
            0 => Some(fields.rest.len()),
            1 => usize::try_from(fields.u64()?).ok().and_then(|size| size.checked_sub(16)),
            small if small < 8 => None,
            size => Some(size as usize - 8),
        }
        .ok_or_else(|| VideoError::Parse(format!("box '{}' has an impossible size", kind.escape_ascii())))?;
        let payload = fields.take(payload_len).map_err(|_| {
            VideoError::Parse(format!("box '{}' runs past the end of its container", kind.escape_ascii()))
        })?;
        boxes.push((kind, payload));
    }
    Ok(boxes)
}

/// The payload of the first child of `level` with type `kind`.
pub(super) fn child<'a>(level: &'a [u8], kind: &[u8; 4]) -> Result<&'a [u8], VideoError> {
    children(level)?
        .into_iter()
        .find(|(found, _)| found == kind)
        .map(|(_, payload)| payload)
        .ok_or_else(|| VideoError::Parse(format!("no '{}' box", kind.escape_ascii())))
}

fn truncated(what: &str) -> VideoError {
    VideoError::Parse(format!("'{what}' is truncated"))
}

/// Big-endian fields read off the front of a payload; running out is a parse error, not a panic.
pub(super) struct Fields<'a> {
    pub rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(rest: &'a [u8], what: &'static str) -> Self {
        Fields { rest, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], VideoError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or_else(|| truncated(self.what))?;
        self.rest = tail;
        Ok(head)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), VideoError> {
        self.take(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, VideoError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, VideoError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, VideoError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, VideoError> {
        Ok(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }
}
