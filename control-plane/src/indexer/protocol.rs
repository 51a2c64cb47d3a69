//! The catalog's line protocol, byte-exact: a request is one line
//! `COMMAND|PACKAGE|DEPENDENCIES` (the `\n` already taken off), and its
//! answer one of three lines.
//!
//! `COMMAND` is `INDEX`, `REMOVE` or `QUERY`, upper case. `DEPENDENCIES`
//! is a comma-separated list (empty entries are skipped, so a trailing
//! comma is fine), which `REMOVE` and `QUERY` check and ignore. Anything else
//! is malformed and answered `ERROR`: not exactly three fields, another
//! command, an empty or invalid name, bytes that are not UTF-8.

use crate::{
    core::catalog::{Change, Name, parse_dependencies},
    telemetry::LineCommand,
};

/// Answer: the command succeeded (`QUERY`: the name is indexed).
pub const OK: &[u8] = b"OK\n";
/// Answer: the rules refused it (`QUERY`: the name is not indexed).
pub const FAIL: &[u8] = b"FAIL\n";
/// Answer: the line is malformed.
pub const ERROR: &[u8] = b"ERROR\n";

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `INDEX` or `REMOVE`: a change to write.
    Change(Change),
    /// `QUERY`: whether the name, a valid one, is indexed (borrowed from
    /// the line: most lines are queries, and a lookup needs no copy).
    Query(&'a str),
}

impl Request<'_> {
    /// The command, as counted.
    pub fn command(&self) -> LineCommand {
        match self {
            Request::Change(Change::Index { .. }) => LineCommand::Index,
            Request::Change(Change::Remove { .. }) => LineCommand::Remove,
            Request::Query(_) => LineCommand::Query,
        }
    }
}

/// Reads one line (without its `\n`). A malformed line gives the command
/// it named, if any, for counting.
pub fn parse(line: &[u8]) -> Result<Request<'_>, LineCommand> {
    let mut fields = line.splitn(4, |&b| b == b'|');
    let command = match fields.next() {
        Some(b"INDEX") => LineCommand::Index,
        Some(b"REMOVE") => LineCommand::Remove,
        Some(b"QUERY") => LineCommand::Query,
        _ => return Err(LineCommand::Other),
    };
    let (Some(package), Some(dependencies), None) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(command);
    };
    let package = std::str::from_utf8(package).map_err(|_| command)?;
    Name::check(package).map_err(|_| command)?;
    let dependencies = std::str::from_utf8(dependencies)
        .ok()
        .and_then(|d| parse_dependencies(d.split(',')).ok())
        .ok_or(command)?;
    let name = || Name::parse(package).map_err(|_| command);
    Ok(match command {
        LineCommand::Index => Request::Change(Change::Index {
            name: name()?,
            dependencies,
        }),
        LineCommand::Remove => Request::Change(Change::Remove { name: name()? }),
        _ => Request::Query(package),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    #[test]
    fn lines_become_requests_or_errors() {
        #[track_caller]
        fn check(line: &[u8], expected: Result<Request, LineCommand>) {
            assert_eq!(parse(line), expected, "{:?}", String::from_utf8_lossy(line));
        }
        let index = |n: &str, deps: &[&str]| {
            Ok(Request::Change(Change::Index {
                name: name(n),
                dependencies: deps.iter().map(|d| name(d)).collect(),
            }))
        };
        check(
            b"INDEX|cloog|gmp,isl,pkg-config",
            index("cloog", &["gmp", "isl", "pkg-config"]),
        );
        check(b"INDEX|ceylon|", index("ceylon", &[]));
        check(b"INDEX|gtk+|glib,", index("gtk+", &["glib"]));
        check(b"INDEX|libsigc++|,,gtk+,", index("libsigc++", &["gtk+"]));
        check("INDEX|ñandú|été".as_bytes(), index("ñandú", &["été"]));
        check(
            b"REMOVE|cloog|",
            Ok(Request::Change(Change::Remove {
                name: name("cloog"),
            })),
        );
        check(
            b"REMOVE|cloog|ignored,list",
            Ok(Request::Change(Change::Remove {
                name: name("cloog"),
            })),
        );
        check(b"QUERY|cloog|", Ok(Request::Query("cloog")));
        use LineCommand::*;
        // Malformed, each answered ERROR: the forms the protocol names...
        check(b"INDEX|a|b|c", Err(Index));
        check(b"index|a|", Err(Other));
        check(b"INDEX||", Err(Index));
        check(b"INDEX|emacs=elisp", Err(Index));
        check("INDEX|emacs☃elisp".as_bytes(), Err(Index));
        check(b"BLINDEX|a|", Err(Other));
        // ...and others.
        check(b"", Err(Other));
        check(b"INDEX", Err(Index));
        check(b"INDEX|a", Err(Index));
        check(b"QUERY||", Err(Query));
        check(b"REMOVE| a|", Err(Remove));
        check(b"INDEX|a b|", Err(Index));
        check(b"INDEX|a|b c", Err(Index));
        check(b"INDEX|a|\r", Err(Index));
        check(b"INDEX|a|\x07", Err(Index));
        check("QUERY|zero\u{200b}width|".as_bytes(), Err(Query));
        check("INDEX|a|b\u{feff}".as_bytes(), Err(Index));
        check(b"INDEX|\xff|", Err(Index));
        check(b"INDEX|a|\xff", Err(Index));
        check(b"QUERY|a|\r", Err(Query));
        check(b" QUERY|a|", Err(Other));
        check(b"QUERY |a|", Err(Other));
    }
}
