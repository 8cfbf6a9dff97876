//! A minimal, bounds-checked reader of ISO-BMFF boxes.
//!
//! Files handed to the evaluator come from anywhere (the farm, ffmpeg, a browser download), so every
//! length is checked against the bytes actually present: a damaged file is an error, never a panic,
//! an endless loop or a huge allocation.

use crate::error::Error;

pub(super) type FourCc = [u8; 4];

/// The boxes directly inside `data`, each as its type and payload.
pub(super) fn children(data: &[u8]) -> Result<Vec<(FourCc, &[u8])>, Error> {
    let mut found = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut header = Fields::new(rest, "box header");
        let size = header.u32()?;
        let mut kind = [0u8; 4];
        kind.copy_from_slice(header.take(4)?);
        let (header_len, total) = match size {
            // Size 0: the box runs to the end of its parent.
            0 => (8, rest.len() as u64),
            1 => (16, header.u64()?),
            n => (8, u64::from(n)),
        };
        if total < header_len as u64 || total > rest.len() as u64 {
            let name = kind.escape_ascii();
            return Err(Error::Container(format!("box '{name}' claims {total} bytes, {} remain", rest.len())));
        }
        let (this, next) = rest.split_at(total as usize);
        found.push((kind, &this[header_len..]));
        rest = next;
    }
    Ok(found)
}

/// The first box of type `kind` directly inside `data`.
pub(super) fn child<'a>(data: &'a [u8], kind: &FourCc) -> Result<&'a [u8], Error> {
    children(data)?
        .into_iter()
        .find(|(found, _)| found == kind)
        .map(|(_, payload)| payload)
        .ok_or_else(|| Error::Container(format!("no '{}' box", kind.escape_ascii())))
}

/// Like [`child`], but a missing box is `None` rather than an error.
pub(super) fn optional_child<'a>(data: &'a [u8], kind: &FourCc) -> Result<Option<&'a [u8]>, Error> {
    Ok(children(data)?.into_iter().find(|(found, _)| found == kind).map(|(_, payload)| payload))
}

/// Big-endian fields read off the front of a payload; running out is an error naming the payload.
pub(super) struct Fields<'a> {
    pub rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(rest: &'a [u8], what: &'static str) -> Self {
        Fields { rest, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(Error::Container(format!("'{}' is truncated", self.what)));
        };
        self.rest = tail;
        Ok(head)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }

    /// A count of `entry_len`-byte entries that must all fit in what is left, so that a corrupt
    /// count cannot make the caller allocate or loop far beyond the file.
    pub fn count(&mut self, entry_len: usize) -> Result<usize, Error> {
        let count = self.u32()? as usize;
        if count.saturating_mul(entry_len) > self.rest.len() {
            return Err(Error::Container(format!("'{}' lists {count} entries, more than it holds", self.what)));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_boxes_and_refuses_overlong_ones() {
        let mut file = Vec::new();
        file.extend_from_slice(&[0, 0, 0, 12, b'f', b't', b'y', b'p', 1, 2, 3, 4]);
        file.extend_from_slice(&[0, 0, 0, 0, b'm', b'd', b'a', b't', 9, 9]);
        let boxes = children(&file).expect("boxes");
        assert_eq!(boxes, [(*b"ftyp", &[1u8, 2, 3, 4][..]), (*b"mdat", &[9u8, 9][..])]);
        assert!(child(&file, b"moov").is_err());
        assert!(children(&[0, 0, 0, 40, b'f', b'r', b'e', b'e']).is_err());
        assert!(children(&[0, 0, 0, 4, b'f', b'r', b'e', b'e']).is_err());
        assert!(children(&[0, 0, 0]).is_err());
    }

    #[test]
    fn counts_beyond_the_payload_are_refused() {
        let mut fields = Fields::new(&[0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8], "stco");
        assert!(fields.count(4).is_err());
        let mut fields = Fields::new(&[0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8], "stco");
        assert_eq!(fields.count(4).expect("count"), 2);
    }
}
