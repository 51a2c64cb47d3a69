//! gRPC-Web over HTTP/1.1 as a browser speaks it: a call is a `POST` whose
//! body is a frame (a flag byte, a big-endian length, the message); the
//! answer's body holds data frames (flag 0) and a trailer frame (flag
//! 0x80) carrying `grpc-status`, unless the status came in the headers
//! already (a trailers-only answer). And the CORS preflight a browser sends
//! before a call from another origin.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::http::{Request, Response};

/// The content type of a binary gRPC-Web call.
pub const CONTENT_TYPE: &str = "application/grpc-web+proto";

/// A data frame holding `message`.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0);
    body.extend_from_slice(
        &u32::try_from(message.len())
            .expect("a message under 4 GiB")
            .to_be_bytes(),
    );
    body.extend_from_slice(message);
    body.into()
}

/// A unary or server-streaming call of `path` (`/package.Service/Method`)
/// with the encoded `message`, addressed to `addr`; add `origin`,
/// `authorization` or another `host` with [`Request::header`].
pub fn call(addr: SocketAddr, path: &str, message: &[u8]) -> Request {
    Request::post(addr, path, frame(message))
        .header("content-type", CONTENT_TYPE)
        .header("x-grpc-web", "1")
}

/// The preflight of a gRPC-Web call of `path` from a page of `origin`.
pub fn preflight(addr: SocketAddr, path: &str, origin: &str) -> Request {
    Request::options(addr, path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
}

/// The frames of `body` received whole so far: (flag, content).
fn frames(mut body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut frames = Vec::new();
    while let [flag, a, b, c, d, rest @ ..] = body {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if rest.len() < len {
            break;
        }
        frames.push((*flag, &rest[..len]));
        body = &rest[len..];
    }
    frames
}

/// The messages of the data frames of `body` received whole so far.
pub fn messages(body: &[u8]) -> Vec<Vec<u8>> {
    frames(body)
        .into_iter()
        .filter(|(flag, _)| *flag & 0x80 == 0)
        .map(|(_, message)| message.to_vec())
        .collect()
}

/// The trailers of `body`'s trailer frame: `name: value` lines, names in
/// lower case.
pub(crate) fn trailers(body: &[u8]) -> Vec<(String, String)> {
    frames(body)
        .into_iter()
        .filter(|(flag, _)| *flag & 0x80 != 0)
        .flat_map(|(_, block)| {
            String::from_utf8_lossy(block)
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Response {
    /// The gRPC status of a gRPC-Web answer: from its headers (trailers
    /// only) or its trailer frame; `None` when no handler answered.
    pub fn grpc_status(&self) -> Option<u32> {
        let text = match self.header("grpc-status") {
            Some(status) => status.to_owned(),
            None => {
                trailers(&self.body)
                    .into_iter()
                    .find(|(name, _)| name == "grpc-status")?
                    .1
            }
        };
        Some(text.parse().expect("grpc-status is a number"))
    }

    /// The messages of a gRPC-Web answer.
    pub fn grpc_messages(&self) -> Vec<Vec<u8>> {
        messages(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_messages_and_trailers() {
        let mut body = frame(b"one").to_vec();
        body.extend_from_slice(&frame(b""));
        let block = b"grpc-status:0\r\nGrpc-Message: ok\r\n";
        body.push(0x80);
        body.extend_from_slice(&u32::try_from(block.len()).expect("short").to_be_bytes());
        body.extend_from_slice(block);
        // The start of a frame still on its way.
        body.extend_from_slice(&[0, 0, 0, 0, 9, b'x']);
        assert_eq!(messages(&body), [b"one".to_vec(), Vec::new()]);
        assert_eq!(
            trailers(&body),
            [
                ("grpc-status".to_owned(), "0".to_owned()),
                ("grpc-message".to_owned(), "ok".to_owned())
            ]
        );
    }
}
