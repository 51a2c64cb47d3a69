//! The codec of the generated `farm.v1` servers: tonic-prost's encoder, and
//! a decoder that answers a request which does not decode with
//! `INVALID_ARGUMENT` and one short sentence.
//!
//! tonic-prost turns every decode failure into `INTERNAL` with prost's whole
//! message, which names every field on the way down: for a configuration
//! nested 90 objects deep, some 3 KB. A server that cannot decode a request
//! has done nothing wrong; the caller sent bytes that are not the message.
//! Clients keep tonic-prost's codec (`build.rs` generates them apart): a
//! response that does not decode is the server's fault, and stays
//! `INTERNAL`.

use std::{any::type_name, marker::PhantomData};

use prost::{DecodeError, Message, bytes::Buf};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// The codec of every generated server: `T` is the response, `U` the
/// request.
#[derive(Debug)]
pub struct ServerCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes requests of type `U`; see [`decode_request`].
#[derive(Debug)]
pub struct RequestDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_request(buf).map(Some)
    }
}

/// Decodes a request; bytes that are not a `U` give `INVALID_ARGUMENT`
/// saying in a few words what is wrong, and prost's full account goes to
/// the debug log.
fn decode_request<U: Message + Default>(buf: impl Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|err| {
        let message = type_name::<U>().rsplit("::").next().unwrap_or_default();
        tracing::debug!(message, cause = %err, "a request does not decode");
        Status::invalid_argument(format!(
            "the request could not be decoded: {}",
            reason(&err)
        ))
    })
}

/// What is wrong with bytes that did not decode, in a few words.
///
/// prost keeps its error kinds private; its message ends with the root
/// cause, after the fields it went through. A cause not listed here still
/// gets a sentence, only a vaguer one.
fn reason(err: &DecodeError) -> &'static str {
    let text = err.to_string();
    let cause = |ending: &str| text.ends_with(ending);
    if cause("recursion limit reached") {
        "it is nested too deeply"
    } else if cause("data is not UTF-8 encoded") {
        "a string is not valid UTF-8"
    } else if cause("buffer underflow") || cause("delimited length exceeded") {
        "it is truncated"
    } else {
        "it is not a valid protobuf message"
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{Struct, Value, value::Kind};
    use tonic::Code;

    use super::*;
    use crate::v1::PutConfigRequest;

    /// A configuration whose data is `depth` objects deep.
    fn nested(depth: usize) -> PutConfigRequest {
        let mut data = Struct::default();
        for _ in 1..depth {
            let inner = Value {
                kind: Some(Kind::StructValue(data)),
            };
            data = Struct {
                fields: [("a".to_owned(), inner)].into(),
            };
        }
        PutConfigRequest {
            scope: "global".into(),
            data: Some(data),
            expected_version: 0,
            merge: false,
        }
    }

    #[track_caller]
    fn refused(bytes: &[u8], reason: &str) {
        let status = decode_request::<PutConfigRequest>(bytes).expect_err("must not decode");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            format!("the request could not be decoded: {reason}")
        );
    }

    #[test]
    fn requests_that_do_not_decode_are_the_callers_fault() {
        let deep = nested(90).encode_to_vec();
        assert!(PutConfigRequest::decode(deep.as_slice()).is_err());
        refused(&deep, "it is nested too deeply");
        refused(&deep[..deep.len() - 3], "it is truncated");
        // Field 1 (scope), a string of two bytes that are not UTF-8.
        refused(&[0x0a, 0x02, 0xc3, 0x28], "a string is not valid UTF-8");
        // Field 1 announces 9 bytes and carries 2.
        refused(&[0x0a, 0x09, b'g', b'l'], "it is truncated");
        // Wire type 7 does not exist; tag 0 is not a field.
        refused(&[0x0f, 0x00], "it is not a valid protobuf message");
        refused(&[0x00, 0x00], "it is not a valid protobuf message");
        // A varint that never ends (or runs past ten bytes).
        refused(&[0x18, 0xff, 0xff], "it is not a valid protobuf message");
    }

    #[test]
    fn requests_that_decode_are_unchanged() {
        let shallow = nested(30);
        let decoded: PutConfigRequest =
            decode_request(shallow.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, shallow);
        let empty: PutConfigRequest = decode_request(&[][..]).expect("empty is all defaults");
        assert_eq!(empty, PutConfigRequest::default());
    }
}
