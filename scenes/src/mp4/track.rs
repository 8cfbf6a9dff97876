//! Finds an MP4's H.264 video track and where each of its samples lies in the file.

use super::boxes::{child, children, optional_child, Fields};
use crate::error::Error;
use std::ops::Range;

/// What decoding needs from the first video track.
pub(super) struct AvcTrack<'a> {
    /// `profile_idc` from `avcC`: 66 Baseline, 77 Main, 100 High, ...
    pub profile: u8,
    /// Bytes in each NAL unit's length prefix inside a sample (1, 2 or 4).
    pub length_size: usize,
    /// SPS and PPS NAL units, which MP4 keeps out of band.
    pub parameter_sets: Vec<&'a [u8]>,
    /// Byte range of every sample, in decode order. Pictures need no reordering by `ctts` here:
    /// OpenH264 itself hands out B-frame streams in display order.
    pub samples: Vec<Range<usize>>,
}

/// The first track whose handler is video ("first" in file order, as players pick by default).
pub(super) fn first_avc_track(file: &[u8]) -> Result<AvcTrack<'_>, Error> {
    let moov = child(file, b"moov")?;
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        let mdia = child(trak, b"mdia")?;
        let mut hdlr = Fields::new(child(mdia, b"hdlr")?, "hdlr");
        hdlr.skip(8)?;
        if hdlr.take(4)? == b"vide" {
            return avc_track(child(child(mdia, b"minf")?, b"stbl")?, file.len());
        }
    }
    Err(Error::Unsupported("the file has no video track".into()))
}

fn avc_track(stbl: &[u8], file_len: usize) -> Result<AvcTrack<'_>, Error> {
    let stsd = child(stbl, b"stsd")?;
    let entries = stsd.get(8..).ok_or_else(|| Error::Container("'stsd' is truncated".into()))?;
    let (codec, entry) =
        children(entries)?.into_iter().next().ok_or_else(|| Error::Container("'stsd' has no entry".into()))?;
    // avc3 carries parameter sets in band as well; both have an avcC.
    if &codec != b"avc1" && &codec != b"avc3" {
        return Err(Error::Unsupported(format!("the video track is '{}', not H.264 (avc1)", codec.escape_ascii())));
    }
    // A visual sample entry has 78 bytes of fixed fields before its child boxes.
    let boxes = entry.get(78..).ok_or_else(|| Error::Container(format!("'{}' is truncated", codec.escape_ascii())))?;
    let mut avcc = Fields::new(child(boxes, b"avcC")?, "avcC");
    avcc.skip(1)?;
    let profile = avcc.u8()?;
    avcc.skip(2)?;
    let length_size = usize::from(avcc.u8()? & 3) + 1;
    let mut parameter_sets = Vec::new();
    // The SPS count keeps 5 bits of its byte, the PPS count all 8.
    for mask in [0x1f, 0xff] {
        for _ in 0..avcc.u8()? & mask {
            let len = usize::from(avcc.u16()?);
            parameter_sets.push(avcc.take(len)?);
        }
    }
    let samples = sample_ranges(stbl, file_len)?;
    Ok(AvcTrack { profile, length_size, parameter_sets, samples })
}

/// Sample byte ranges from the size (`stsz`), chunk map (`stsc`) and chunk offset (`stco`/`co64`) tables.
fn sample_ranges(stbl: &[u8], file_len: usize) -> Result<Vec<Range<usize>>, Error> {
    let mut stsz = Fields::new(child(stbl, b"stsz")?, "stsz");
    stsz.skip(4)?;
    let constant = stsz.u32()?;
    let sizes: Vec<u64> = if constant == 0 {
        let count = stsz.count(4)?;
        (0..count).map(|_| stsz.u32().map(u64::from)).collect::<Result<_, _>>()?
    } else {
        let count = stsz.u32()? as usize;
        // Every sample holds at least one byte of the file.
        if count > file_len {
            return Err(Error::Container(format!("'stsz' lists {count} samples, more than the file's bytes")));
        }
        vec![u64::from(constant); count]
    };

    let offsets: Vec<u64> = if let Some(stco) = optional_child(stbl, b"stco")? {
        let mut stco = Fields::new(stco, "stco");
        stco.skip(4)?;
        let count = stco.count(4)?;
        (0..count).map(|_| stco.u32().map(u64::from)).collect::<Result<_, _>>()?
    } else {
        let mut co64 = Fields::new(child(stbl, b"co64")?, "co64");
        co64.skip(4)?;
        let count = co64.count(8)?;
        (0..count).map(|_| co64.u64()).collect::<Result<_, _>>()?
    };

    let mut stsc = Fields::new(child(stbl, b"stsc")?, "stsc");
    stsc.skip(4)?;
    let runs = stsc.count(12)?;
    // (first chunk, samples per chunk), first chunks counted from 1.
    let mut map = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (first, per_chunk) = (stsc.u32()? as usize, stsc.u32()? as usize);
        stsc.skip(4)?;
        map.push((first, per_chunk));
    }

    let mut ranges = Vec::with_capacity(sizes.len());
    let mut sizes_left = sizes.iter();
    for (chunk, &offset) in offsets.iter().enumerate() {
        let per_chunk = map.iter().take_while(|(first, _)| *first <= chunk + 1).last().map_or(0, |run| run.1);
        let mut at = offset;
        for _ in 0..per_chunk {
            let Some(&size) = sizes_left.next() else { break };
            let end = at.saturating_add(size);
            if end > file_len as u64 {
                return Err(Error::Container(format!("sample {} lies beyond the end of the file", ranges.len())));
            }
            ranges.push(at as usize..end as usize);
            at = end;
        }
    }
    if ranges.len() != sizes.len() {
        return Err(Error::Container(format!("chunks hold {} of the {} samples", ranges.len(), sizes.len())));
    }
    Ok(ranges)
}
