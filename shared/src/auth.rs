//! The API token: what clients send (`authorization: Bearer TOKEN`, as gRPC metadata or an HTTP header)
//! and how the coordinator checks it. A coordinator started without a token accepts everyone.
//!
//! The web page also accepts HTTP Basic authentication with the token as the password (any user name),
//! so that a browser can ask for it.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The header (and gRPC metadata key) that carries the token.
pub const HEADER: &str = "authorization";

/// Where the token comes from, for error messages.
const HOW: &str = "send `authorization: Bearer TOKEN` (the CLI's --api-token or PATCHWORK_API_TOKEN)";

/// A client's interceptor: adds the token to every request, or nothing without one.
#[derive(Clone, Default)]
pub struct SendToken(Option<MetadataValue<Ascii>>);

// Neither side prints its token (configurations are logged).
impl std::fmt::Debug for SendToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SendToken(set)" } else { "SendToken(none)" })
    }
}

impl SendToken {
    /// A token must be printable ASCII (it travels in a header).
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| "api token: must be printable ASCII without spaces at its ends".to_string()),
        }
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}

/// The coordinator's check: the token it was started with, or none.
#[derive(Clone, Default)]
pub struct RequireToken(Option<Arc<str>>);

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "RequireToken(set)" } else { "RequireToken(none)" })
    }
}

impl RequireToken {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    pub fn is_required(&self) -> bool {
        self.0.is_some()
    }

    /// Whether an `authorization` header value carries the token: `Bearer TOKEN`, or (`basic`) HTTP
    /// Basic with the token as the password.
    pub fn accepts(&self, header: Option<&str>, basic: bool) -> bool {
        let Some(expected) = &self.0 else { return true };
        let Some(header) = header.map(str::trim) else { return false };
        if let Some(token) = strip_scheme(header, "bearer") {
            return same(token.trim().as_bytes(), expected.as_bytes());
        }
        if basic {
            if let Some(decoded) = strip_scheme(header, "basic").and_then(|b| base64_decode(b.trim())) {
                if let Some(at) = decoded.iter().position(|&b| b == b':') {
                    return same(&decoded[at + 1..], expected.as_bytes());
                }
            }
        }
        false
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get(HEADER).and_then(|v| v.to_str().ok());
        if self.accepts(header, false) {
            return Ok(request);
        }
        let why = if header.is_some() { "the API token is wrong" } else { "this coordinator needs an API token" };
        Err(Status::unauthenticated(format!("authorization: {why}; {HOW}")))
    }
}

/// `value` without its scheme (`Bearer x` → `x`), the scheme matched without regard to case.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Compares in time that depends only on the lengths, not on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with padding, as browsers send Basic credentials; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, quad) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_accepted_only_when_they_match() {
        let open = RequireToken::new(None);
        assert!(open.accepts(None, false) && !open.is_required());
        assert!(!RequireToken::new(Some("")).is_required(), "an empty token means none");
        let guarded = RequireToken::new(Some("s3cret"));
        assert!(guarded.accepts(Some("Bearer s3cret"), false));
        assert!(guarded.accepts(Some("bearer  s3cret "), false));
        for bad in [None, Some("Bearer s3cre"), Some("Bearer s3cretx"), Some("s3cret"), Some("Token s3cret")] {
            assert!(!guarded.accepts(bad, true), "{bad:?}");
        }
        // Basic: any user, the token as the password ("me:s3cret", "x:s3cr:et"), only where asked for.
        assert!(guarded.accepts(Some("Basic bWU6czNjcmV0"), true));
        assert!(!guarded.accepts(Some("Basic bWU6czNjcmV0"), false));
        assert!(!guarded.accepts(Some("Basic eDpzM2NyOmV0"), true));
        assert!(!guarded.accepts(Some("Basic !!!!"), true));
    }

    #[test]
    fn base64_is_decoded_with_its_padding() {
        assert_eq!(base64_decode("bWU6czNjcmV0").unwrap(), b"me:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        for bad in ["", "YQ=", "Y===", "YQ==YWJj", "Y$Q="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn interceptors_send_and_check_the_token() {
        let mut send = SendToken::new(Some("s3cret")).unwrap();
        let request = send.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(HEADER).unwrap(), "Bearer s3cret");
        assert!(RequireToken::new(Some("s3cret")).call(request).is_ok());
        let status = RequireToken::new(Some("s3cret")).call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().starts_with("authorization: this coordinator needs an API token"), "{status:?}");
        assert!(SendToken::new(Some("bad\ntoken")).is_err());
    }
}
