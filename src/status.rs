//! gRPC status codes by their canonical names (`DEADLINE_EXCEEDED`), as
//! reports, metrics and the node's counters show them. tonic names codes
//! only in prose (`Code::description`) and in Rust case (`Debug`).

/// Highest code gRPC defines: `UNAUTHENTICATED`.
pub const MAX_CODE: u32 = 16;

/// The canonical names, indexed by code.
const NAMES: [&str; MAX_CODE as usize + 1] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of `code` (any integer type); `None` for a number
/// gRPC does not define.
pub fn name(code: impl TryInto<usize>) -> Option<&'static str> {
    code.try_into().ok().and_then(|i| NAMES.get(i)).copied()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_code_has_its_name() {
        assert_eq!(name(0), Some("OK"));
        assert_eq!(
            name(Code::DeadlineExceeded as i32),
            Some("DEADLINE_EXCEEDED")
        );
        assert_eq!(name(14u32), Some("UNAVAILABLE"));
        assert_eq!(name(MAX_CODE), Some("UNAUTHENTICATED"), "the highest code");
        assert_eq!(name(MAX_CODE + 1), None);
        assert_eq!(name(-1i32), None);
        // Names follow tonic's codes one to one: its Rust names, in
        // SCREAMING_SNAKE_CASE.
        for code in 0..=MAX_CODE {
            let rust = format!("{:?}", Code::from(code as i32));
            let mut screaming = String::new();
            for (i, c) in rust.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    screaming.push('_');
                }
                screaming.push(c.to_ascii_uppercase());
            }
            assert_eq!(name(code), Some(screaming.as_str()), "{code}");
        }
    }
}
