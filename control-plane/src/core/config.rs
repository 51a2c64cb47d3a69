//! Versioned configuration: scopes, writes (whole, or a JSON merge patch to
//! the current version), the layered merge, diffs, and the book of each
//! scope's latest version.
//!
//! Versions come from one counter shared by every scope, so they only grow,
//! within a scope and across scopes. A node's effective configuration is the
//! deep merge of `global`, its group's and its own; its version is the
//! highest version among those layers, which grows whenever any layer
//! changes. History lives in the store; the book holds the latest version of
//! each scope, which is all a merge needs. Writes are decided in batches
//! ([`Batch`]) over the book, each seeing those before it, and committed
//! into it once stored.

use std::{collections::HashMap, fmt, str::FromStr, time::SystemTime};

use serde_json::{Map, Value};

use super::{DomainError, NodeId, names::truncate, validate_group};

/// Largest configuration of one scope, as compact JSON.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Deepest configuration, in objects and arrays (`{}` is 1 deep). Deeper
/// data can decode in a `PutConfig` and still not in the answers that carry
/// it a level further down (`History`, a node's heartbeat): protobuf
/// decoders stop at 100 levels, and an object costs three.
pub const MAX_CONFIG_DEPTH: usize = 32;
/// Versions kept per scope; older ones are dropped from the history.
pub const HISTORY_PER_SCOPE: usize = 1000;

/// Where a configuration applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every node.
    Global,
    /// The members of one group.
    Group(String),
    /// One node.
    Node(NodeId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("global"),
            Self::Group(name) => write!(f, "group:{name}"),
            Self::Node(id) => write!(f, "node:{id}"),
        }
    }
}

impl Scope {
    /// Parses `s`, the node of a `node:` scope through `node`: a request
    /// may name a node by id or by name (`Registry::resolve`), whose
    /// errors are returned as they are.
    pub fn parse(
        s: &str,
        node: impl FnOnce(&str) -> Result<NodeId, DomainError>,
    ) -> Result<Self, DomainError> {
        let bad = || DomainError::MalformedScope(truncate(s));
        if s == "global" {
            return Ok(Self::Global);
        }
        if let Some(name) = s.strip_prefix("group:") {
            validate_group(name).map_err(|_| bad())?;
            return Ok(Self::Group(name.to_owned()));
        }
        match s.strip_prefix("node:") {
            Some(given) if !given.is_empty() => node(given).map(Self::Node),
            _ => Err(bad()),
        }
    }
}

/// A scope as it is stored: a node's by id.
impl FromStr for Scope {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, DomainError> {
        Self::parse(s, str::parse).map_err(|_| DomainError::MalformedScope(truncate(s)))
    }
}

/// One version of one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub scope: Scope,
    pub version: u64,
    /// Always a JSON object.
    pub data: Value,
    pub created_at: SystemTime,
    /// Role of the writer (`admin`, or `open` without tokens).
    pub role: String,
    /// The version a rollback copied; 0 for an ordinary write.
    pub rollback_of: u64,
}

/// What a write does to a scope's configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Replaces it with this object, whole.
    Replace(Value),
    /// Applies this JSON merge patch (RFC 7386) to it: objects merge key by
    /// key, recursively; `null` deletes a key; any other value replaces.
    Merge(Value),
}

impl Write {
    /// The data this write stores over `current` (`None`: the scope was
    /// never written, and a patch applies to an empty object).
    fn apply(self, current: Option<&Value>) -> Value {
        match self {
            Self::Replace(data) => data,
            Self::Merge(patch) => {
                let mut data = current
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new()));
                // The json-patch crate's `merge`: RFC 7386 on
                // `serde_json::Value`, from the well-kept crate kube-rs uses
                // for its JSON patches. Our own `merge` below is the
                // layering of scopes, where `null` is a value, not a
                // deletion.
                json_patch::merge(&mut data, &patch);
                data
            }
        }
    }
}

/// Checks that `data` can be stored: an object, at most
/// [`MAX_CONFIG_BYTES`] as JSON, at most [`MAX_CONFIG_DEPTH`] deep, whose
/// known keys hold values a node can apply — judged by the node's own
/// parser (`farm_api::node`), so the control plane and the nodes never
/// disagree. `rollback_of` (0 for a
/// write) names the version a rollback would restore.
pub fn validate_data(data: &Value, rollback_of: u64) -> Result<(), DomainError> {
    let Some(object) = data.as_object() else {
        return Err(DomainError::ConfigNotObject);
    };
    // The size first: a problem report quotes the values it refuses.
    let size = serde_json::to_vec(data).map_or(usize::MAX, |v| v.len());
    if size > MAX_CONFIG_BYTES {
        return Err(DomainError::ConfigTooLarge {
            size,
            max: MAX_CONFIG_BYTES,
        });
    }
    let depth = depth(data);
    if depth > MAX_CONFIG_DEPTH {
        return Err(DomainError::ConfigTooDeep {
            depth,
            max: MAX_CONFIG_DEPTH,
        });
    }
    farm_api::node::check(object).map_err(|problems| DomainError::UnusableConfig {
        rollback_of,
        problems,
    })?;
    Ok(())
}

/// How many objects and arrays deep `value` nests (a scalar: 0).
fn depth(value: &Value) -> usize {
    let deepest = |items: &mut dyn Iterator<Item = &Value>| items.map(depth).max().unwrap_or(0);
    match value {
        Value::Object(map) => 1 + deepest(&mut map.values()),
        Value::Array(items) => 1 + deepest(&mut items.iter()),
        _ => 0,
    }
}

/// Merges `overlay` into `base`: objects key by key (recursively), any
/// other value of `overlay` replacing `base`'s.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// How one key path changed between two configurations.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added {
        path: String,
        new: Value,
    },
    Removed {
        path: String,
        old: Value,
    },
    Changed {
        path: String,
        old: Value,
        new: Value,
    },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Self::Added { path, .. } | Self::Removed { path, .. } | Self::Changed { path, .. } => {
                path
            }
        }
    }
}

/// Changed key paths from `old` to `new`, sorted by path. Objects are
/// compared key by key; anything else as a whole.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    fn walk(
        prefix: &str,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        out: &mut Vec<Change>,
    ) {
        let path = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            }
        };
        for (key, old_value) in old {
            match new.get(key) {
                None => out.push(Change::Removed {
                    path: path(key),
                    old: old_value.clone(),
                }),
                Some(new_value) => match (old_value, new_value) {
                    (Value::Object(a), Value::Object(b)) => walk(&path(key), a, b, out),
                    (a, b) if a != b => out.push(Change::Changed {
                        path: path(key),
                        old: a.clone(),
                        new: b.clone(),
                    }),
                    _ => {}
                },
            }
        }
        for (key, new_value) in new {
            if !old.contains_key(key) {
                out.push(Change::Added {
                    path: path(key),
                    new: new_value.clone(),
                });
            }
        }
    }
    let empty = Map::new();
    let mut out = Vec::new();
    walk(
        "",
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
        &mut out,
    );
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// A node's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// Highest version among the layers; 0 when none is set.
    pub version: u64,
    pub data: Value,
}

/// The latest version of every scope, and the version counter.
#[derive(Debug, Default)]
pub struct ConfigBook {
    latest: HashMap<Scope, ConfigEntry>,
    last_version: u64,
}

impl ConfigBook {
    /// A book holding these latest entries; the counter continues after
    /// `last_version` (the highest version ever written, kept or not).
    pub fn new(latest: Vec<ConfigEntry>, last_version: u64) -> Self {
        let last_version = latest
            .iter()
            .map(|e| e.version)
            .max()
            .unwrap_or(0)
            .max(last_version);
        Self {
            latest: latest.into_iter().map(|e| (e.scope.clone(), e)).collect(),
            last_version,
        }
    }

    /// The highest version written so far.
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// The latest entry of `scope`, if it was ever written.
    pub fn latest(&self, scope: &Scope) -> Option<&ConfigEntry> {
        self.latest.get(scope)
    }

    /// Current version of `scope` (0 if never written).
    pub fn version_of(&self, scope: &Scope) -> u64 {
        self.latest.get(scope).map_or(0, |e| e.version)
    }

    /// Starts a batch of versions prepared against this book, each seeing
    /// those prepared before it; the book itself changes only when the
    /// batch's entries are committed.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            book: self,
            entries: Vec::new(),
            latest: HashMap::new(),
        }
    }

    /// Makes a prepared (and stored) entry the latest of its scope.
    pub fn commit(&mut self, entry: ConfigEntry) {
        self.last_version = self.last_version.max(entry.version);
        self.latest.insert(entry.scope.clone(), entry);
    }

    /// Commits a batch's entries, in order.
    pub fn commit_all(&mut self, entries: impl IntoIterator<Item = ConfigEntry>) {
        for entry in entries {
            self.commit(entry);
        }
    }

    /// The effective configuration of node `id` in `group`.
    pub fn effective(&self, id: NodeId, group: &str) -> Effective {
        let mut data = Value::Object(Map::new());
        let mut version = 0;
        for scope in [
            Scope::Global,
            Scope::Group(group.to_owned()),
            Scope::Node(id),
        ] {
            if let Some(entry) = self.latest.get(&scope) {
                merge(&mut data, &entry.data);
                version = version.max(entry.version);
            }
        }
        Effective { version, data }
    }
}

/// Versions prepared in order against a [`ConfigBook`] and not yet in it
/// (a group commit's batch): each write is decided as if those before it
/// were committed, so a compare-and-set checks, and a merge patches, the
/// latest version of its scope, an earlier one of the batch included. The
/// book is not touched: dropping the batch undoes it.
#[derive(Debug)]
pub struct Batch<'a> {
    book: &'a ConfigBook,
    /// Prepared entries, in version order.
    entries: Vec<ConfigEntry>,
    /// Index in `entries` of each scope's latest prepared entry.
    latest: HashMap<Scope, usize>,
}

impl Batch<'_> {
    /// The latest version of `scope`, this batch's included.
    fn latest(&self, scope: &Scope) -> Option<&ConfigEntry> {
        match self.latest.get(scope) {
            Some(&index) => Some(&self.entries[index]),
            None => self.book.latest(scope),
        }
    }

    /// Whether an entry of this batch is `scope`'s latest: a write to it
    /// is then decided against a version not yet committed.
    pub fn touches(&self, scope: &Scope) -> bool {
        self.latest.contains_key(scope)
    }

    /// The highest version, this batch's included.
    pub fn last_version(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.book.last_version, |e| e.version)
    }

    /// Prepares the next version of `scope`, checking `expected` (0: no
    /// check) against the current one, the latest of the batch else the
    /// book's; a merge applies to that same version, and its result is
    /// checked like a whole write. Adds it to the batch and returns it. A
    /// refused write leaves the batch as it was; the book changes only when
    /// the batch's entries are committed ([`ConfigBook::commit_all`]).
    pub fn prepare(
        &mut self,
        scope: Scope,
        write: Write,
        expected: u64,
        role: &str,
        rollback_of: u64,
        now: SystemTime,
    ) -> Result<&ConfigEntry, DomainError> {
        let latest = self.latest(&scope);
        let data = write.apply(latest.map(|e| &e.data));
        validate_data(&data, rollback_of)?;
        let current = latest.map_or(0, |e| e.version);
        if expected != 0 && expected != current {
            return Err(DomainError::VersionConflict {
                scope,
                expected,
                current,
            });
        }
        let entry = ConfigEntry {
            scope,
            version: self.last_version() + 1,
            data,
            created_at: now,
            role: role.to_owned(),
            rollback_of,
        };
        let index = self.entries.len();
        self.latest.insert(entry.scope.clone(), index);
        self.entries.push(entry);
        Ok(&self.entries[index])
    }

    /// The entries prepared, in version order (consecutive versions).
    pub fn entries(&self) -> &[ConfigEntry] {
        &self.entries
    }

    /// The entries prepared, in version order, for the store and then
    /// [`ConfigBook::commit_all`].
    pub fn into_entries(self) -> Vec<ConfigEntry> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;

    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        for text in ["global", "group:edge", "node:n7"] {
            let scope: Scope = text.parse().expect(text);
            assert_eq!(scope.to_string(), text);
        }
        for bad in [
            "",
            "Global",
            "group:",
            "group:a/b",
            "node:",
            "node:7",
            "node:nx",
            "zone:a",
        ] {
            assert!(
                matches!(bad.parse::<Scope>(), Err(DomainError::MalformedScope(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn merge_is_deep_for_objects_and_replaces_the_rest() {
        let mut base =
            json!({"workload": {"delay_ms": 5, "error_rate": 0.1}, "tags": [1, 2], "x": 1});
        merge(
            &mut base,
            &json!({"workload": {"delay_ms": 9}, "tags": [3], "x": {"y": 2}}),
        );
        assert_eq!(
            base,
            json!({"workload": {"delay_ms": 9, "error_rate": 0.1}, "tags": [3], "x": {"y": 2}})
        );
    }

    #[test]
    fn data_must_be_a_small_object_a_node_can_apply() {
        assert!(validate_data(&json!({"a": 1}), 0).is_ok());
        assert_eq!(
            validate_data(&json!([1]), 0),
            Err(DomainError::ConfigNotObject)
        );
        assert!(validate_data(&json!("text"), 0).is_err());
        let big = json!({"blob": "x".repeat(MAX_CONFIG_BYTES)});
        let err = validate_data(&big, 0).expect_err("too big");
        assert!(err.to_string().contains("limit"), "{err}");
        let bad = json!({"workload": {"delay_ms": -5}, "mine": "anything"});
        let err = validate_data(&bad, 0).expect_err("unusable");
        assert_eq!(
            err.to_string(),
            "workload.delay_ms is -5; it must be a whole number from 0 to 60000."
        );
        let err = validate_data(&bad, 7).expect_err("unusable");
        assert!(
            err.to_string()
                .starts_with("version 7 cannot be restored, a node could not apply it: "),
            "{err}"
        );
    }

    #[test]
    fn diff_lists_paths() {
        let old = json!({"a": 1, "w": {"d": 5, "e": 1}, "gone": true});
        let new = json!({"a": 2, "w": {"d": 5, "r": 3}, "new": [1]});
        let paths: Vec<String> = diff(&old, &new)
            .iter()
            .map(|c| match c {
                Change::Added { path, .. } => format!("+{path}"),
                Change::Removed { path, .. } => format!("-{path}"),
                Change::Changed { path, .. } => format!("~{path}"),
            })
            .collect();
        assert_eq!(paths, ["~a", "-gone", "+new", "-w.e", "+w.r"]);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn versions_are_shared_and_compare_and_set_checks_the_scope() {
        let mut book = ConfigBook::default();
        let now = UNIX_EPOCH;
        let put = |book: &mut ConfigBook, scope: &str, data: Value, expected| {
            let entry = book
                .batch()
                .prepare(
                    scope.parse().expect("scope"),
                    Write::Replace(data),
                    expected,
                    "admin",
                    0,
                    now,
                )?
                .clone();
            let version = entry.version;
            book.commit(entry);
            Ok::<u64, DomainError>(version)
        };
        assert_eq!(put(&mut book, "global", json!({"a": 1}), 0), Ok(1));
        assert_eq!(put(&mut book, "group:edge", json!({"b": 1}), 0), Ok(2));
        assert_eq!(put(&mut book, "global", json!({"a": 2}), 1), Ok(3));
        let lost = put(&mut book, "global", json!({"a": 3}), 1).expect_err("stale");
        assert!(
            lost == DomainError::VersionConflict {
                scope: Scope::Global,
                expected: 1,
                current: 3
            },
            "{lost}"
        );
        assert_eq!(book.version_of(&Scope::Global), 3);

        let id: NodeId = "n4".parse().expect("id");
        let e = book.effective(id, "edge");
        assert_eq!(
            e,
            Effective {
                version: 3,
                data: json!({"a": 2, "b": 1})
            }
        );
        assert_eq!(put(&mut book, "node:n4", json!({"a": 9}), 0), Ok(4));
        assert_eq!(book.effective(id, "edge").data, json!({"a": 9, "b": 1}));
        assert_eq!(book.effective(id, "edge").version, 4);
        assert_eq!(book.effective(id, "other").version, 4);
        let other: NodeId = "n5".parse().expect("id");
        assert_eq!(
            book.effective(other, "other"),
            Effective {
                version: 3,
                data: json!({"a": 2})
            }
        );
        let empty = ConfigBook::default().effective(other, "x");
        assert_eq!(
            empty,
            Effective {
                version: 0,
                data: json!({})
            }
        );
    }
    #[test]
    fn a_merge_patches_the_version_it_checks_against() {
        let mut book = ConfigBook::default();
        let now = UNIX_EPOCH;
        let write = |book: &mut ConfigBook, write: Write, expected| {
            let entry = book
                .batch()
                .prepare(Scope::Global, write, expected, "admin", 0, now)?
                .clone();
            book.commit(entry.clone());
            Ok::<ConfigEntry, DomainError>(entry)
        };
        // A scope never written: the patch applies to an empty object, and
        // its `null`s delete nothing and are not stored.
        let first = write(
            &mut book,
            Write::Merge(json!({"workload": {"delay_ms": 5}, "gone": null})),
            0,
        )
        .expect("merge into nothing");
        assert_eq!(first.data, json!({"workload": {"delay_ms": 5}}));

        let base = json!({
            "workload": {"delay_ms": 5, "error_rate": 0.1},
            "tags": [1, 2],
            "keep": "me",
            "drop": 1,
        });
        let v = write(&mut book, Write::Replace(base), 0)
            .expect("replace")
            .version;
        let patch = json!({"workload": {"delay_ms": 9}, "tags": [3], "drop": null});
        let merged = write(&mut book, Write::Merge(patch.clone()), v).expect("merge");
        assert_eq!(
            merged.data,
            json!({"workload": {"delay_ms": 9, "error_rate": 0.1}, "tags": [3], "keep": "me"})
        );
        assert_eq!(merged.version, v + 1);

        // Stale: refused, and the book keeps what it had.
        let lost = write(&mut book, Write::Merge(patch), v).expect_err("stale");
        assert_eq!(
            lost,
            DomainError::VersionConflict {
                scope: Scope::Global,
                expected: v,
                current: v + 1
            }
        );
        // The merged result is what is checked: its size and its values.
        let blob = json!({"blob": "x".repeat(MAX_CONFIG_BYTES - 20)});
        assert_eq!(validate_data(&blob, 0), Ok(()), "the patch alone fits");
        let err = write(&mut book, Write::Merge(blob), 0).expect_err("too big once merged");
        assert!(matches!(err, DomainError::ConfigTooLarge { .. }), "{err}");
        let deep = (1..=MAX_CONFIG_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
        assert_eq!(validate_data(&deep, 0), Ok(()), "{MAX_CONFIG_DEPTH} deep");
        let err = write(&mut book, Write::Merge(json!({ "b": [deep] })), 0).expect_err("too deep");
        assert_eq!(
            err,
            DomainError::ConfigTooDeep {
                depth: MAX_CONFIG_DEPTH + 2,
                max: MAX_CONFIG_DEPTH
            }
        );
        let bad = json!({"workload": {"delay_ms": -5}});
        let err = write(&mut book, Write::Merge(bad), 0).expect_err("unusable");
        assert!(matches!(err, DomainError::UnusableConfig { .. }), "{err}");
        assert_eq!(book.latest(&Scope::Global), Some(&merged));

        // Nothing changed is still a new version, as for a whole write.
        let same = write(&mut book, Write::Merge(json!({})), 0).expect("empty patch");
        assert_eq!(
            (same.version, &same.data),
            (merged.version + 1, &merged.data)
        );
    }

    /// Each write of a batch is decided as if those before it were
    /// committed: a merge patches the latest version, the batch's own
    /// included, and versions follow one another; the book is untouched
    /// until the entries are committed.
    #[test]
    fn a_batch_decides_each_write_over_the_ones_before_it() {
        let mut book = ConfigBook::new(
            vec![ConfigEntry {
                scope: Scope::Global,
                version: 4,
                data: json!({"a": 1, "w": {"d": 5}}),
                created_at: UNIX_EPOCH,
                role: "admin".into(),
                rollback_of: 0,
            }],
            4,
        );
        let group = Scope::Group("edge".into());
        // (scope, write, expected, what it gives: its version and data).
        let cases = [
            (
                Scope::Global,
                Write::Merge(json!({"b": 2})),
                4,
                Ok((5, json!({"a": 1, "b": 2, "w": {"d": 5}}))),
            ),
            (
                Scope::Global,
                Write::Merge(json!({"a": null, "w": {"e": 1}})),
                5,
                Ok((6, json!({"b": 2, "w": {"d": 5, "e": 1}}))),
            ),
            (
                Scope::Global,
                Write::Merge(json!({"stale": true})),
                5,
                Err(DomainError::VersionConflict {
                    scope: Scope::Global,
                    expected: 5,
                    current: 6,
                }),
            ),
            (
                group.clone(),
                Write::Merge(json!({"g": 1})),
                0,
                Ok((7, json!({"g": 1}))),
            ),
            (
                group.clone(),
                Write::Merge(json!({"workload": {"delay_ms": -1}})),
                0,
                Err(
                    validate_data(&json!({"g": 1, "workload": {"delay_ms": -1}}), 0)
                        .expect_err("unusable"),
                ),
            ),
            (
                group.clone(),
                Write::Merge(json!({"h": 2})),
                7,
                Ok((8, json!({"g": 1, "h": 2}))),
            ),
            (
                Scope::Global,
                Write::Replace(json!({"only": 1})),
                6,
                Ok((9, json!({"only": 1}))),
            ),
        ];
        let mut batch = book.batch();
        assert!(!batch.touches(&Scope::Global));
        for (i, (scope, write, expected, want)) in cases.into_iter().enumerate() {
            let got = batch
                .prepare(scope, write, expected, "admin", 0, UNIX_EPOCH)
                .map(|e| (e.version, e.data.clone()));
            assert_eq!(got, want, "write {i}");
        }
        assert!(batch.touches(&Scope::Global) && batch.touches(&group));
        assert_eq!(batch.last_version(), 9);
        let entries = batch.into_entries();
        assert_eq!(
            entries.iter().map(|e| e.version).collect::<Vec<_>>(),
            [5, 6, 7, 8, 9]
        );
        // Nothing is in the book until committed.
        assert_eq!(
            (book.version_of(&Scope::Global), book.last_version()),
            (4, 4)
        );
        assert_eq!(book.latest(&group), None);
        book.commit_all(entries);
        assert_eq!(book.last_version(), 9);
        assert_eq!(
            book.latest(&Scope::Global).map(|e| &e.data),
            Some(&json!({"only": 1}))
        );
        assert_eq!(book.version_of(&group), 8);
    }

    /// Compare-and-set in a batch: of the writes expecting one version,
    /// the first wins and the others lose naming the version it made; a
    /// write expecting that new version wins in turn; a batch dropped
    /// leaves the book as it was.
    #[test]
    fn in_a_batch_exactly_one_compare_and_set_wins_per_version() {
        let book = ConfigBook::default();
        let mut batch = book.batch();
        // (expected, won: the version it made; lost: the current version).
        let cases: [(u64, Result<u64, u64>); 8] = [
            (0, Ok(1)),
            (1, Ok(2)),
            (1, Err(2)),
            (1, Err(2)),
            (2, Ok(3)),
            (2, Err(3)),
            (7, Err(3)),
            (3, Ok(4)),
        ];
        for (i, (expected, want)) in cases.into_iter().enumerate() {
            let got = batch
                .prepare(
                    Scope::Global,
                    Write::Replace(json!({"i": i})),
                    expected,
                    "admin",
                    0,
                    UNIX_EPOCH,
                )
                .map(|e| e.version)
                .map_err(|e| match e {
                    DomainError::VersionConflict { current, .. } => current,
                    other => panic!("write {i}: {other}"),
                });
            assert_eq!(got, want, "write {i} expecting {expected}");
        }
        assert_eq!(batch.entries().len(), 4);
        drop(batch);
        assert_eq!(
            (book.last_version(), book.latest(&Scope::Global)),
            (0, None)
        );
    }
}
