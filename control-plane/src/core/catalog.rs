//! The dependency catalog: which names are indexed, and what each depends
//! on. A name can be indexed only once every dependency it names is; it
//! cannot be removed while another indexed name depends on it.
//!
//! [`Graph`] keeps both directions: each entry's dependencies in the order
//! given, and its dependents in name order. Names are interned: every
//! mention of a name shares the entry's one allocation. Entries are found
//! by hash (a query, the most common request, is one lookup), and their
//! names are also kept in order for `list`. Lookups cost nothing that
//! grows with the catalog; `get` and `list` cost the size of their answer
//! (and `list`, the logarithm of the catalog's size).
//!
//! Like the rest of `core`, no I/O: the state layer decides changes here,
//! writes them through the store, and answers after they are on disk.

use std::{
    borrow::Borrow,
    collections::{BTreeSet, HashMap},
    fmt,
    ops::Bound,
    sync::Arc,
};

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use super::DomainError;

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 1024;
/// Most dependencies one entry may name.
pub const MAX_DEPENDENCIES: usize = 10_000;
/// Most names a refusal lists; the rest are counted.
const NAMES_SHOWN: usize = 10;

/// Whether a name may hold `c`: a printable character (a letter, mark,
/// number, punctuation or symbol, so no whitespace, control, format such as
/// U+200B ZERO WIDTH SPACE, private-use or unassigned character) but `|`
/// and `,`.
fn allowed(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic() && c != '|' && c != ',';
    }
    !matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Other | GeneralCategoryGroup::Separator
    )
}

/// A valid catalog name: 1 to [`MAX_NAME_CHARS`] printable characters,
/// none of them `|` or `,` (see [`allowed`]). Case
/// matters; `gtk+`, `libsigc++` and non-ASCII names are valid. Cheap to
/// clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// `given` as a name, or why it is not one.
    pub fn parse(given: &str) -> Result<Self, DomainError> {
        Self::check(given)?;
        Ok(Self(given.into()))
    }

    /// Whether `given` is a valid name, without keeping it (a lookup needs
    /// no copy).
    pub fn check(given: &str) -> Result<(), DomainError> {
        let invalid = |problem: String| DomainError::InvalidPackageName {
            given: shorten(given),
            problem,
        };
        if given.is_empty() {
            return Err(invalid("is empty".to_owned()));
        }
        if let Some(c) = given.chars().find(|&c| !allowed(c)) {
            return Err(invalid(format!(
                "holds {c:?}; names may not hold `|`, `,`, whitespace, control or other \
                 characters that do not print"
            )));
        }
        // At most 4 bytes a character: only a long one needs counting.
        if given.len() > MAX_NAME_CHARS {
            let chars = given.chars().count();
            if chars > MAX_NAME_CHARS {
                return Err(invalid(format!(
                    "is {chars} characters long; at most {MAX_NAME_CHARS} allowed"
                )));
            }
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The start of an overlong input, for an error message.
fn shorten(given: &str) -> String {
    const SHOWN: usize = 64;
    match given.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &given[..end]),
        None => given.to_owned(),
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Parses a dependency list: empty entries are left out (so a trailing
/// comma is fine), a repeated one is kept once, at its first place.
pub fn parse_dependencies<'a>(
    given: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Name>, DomainError> {
    let mut names: Vec<Name> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for entry in given.into_iter().filter(|e| !e.is_empty()) {
        if names.len() == MAX_DEPENDENCIES {
            return Err(DomainError::TooManyDependencies {
                max: MAX_DEPENDENCIES,
            });
        }
        let name = Name::parse(entry)?;
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// A change to the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Index `name` with exactly these dependencies, replacing the ones it
    /// had.
    Index { name: Name, dependencies: Vec<Name> },
    /// Take `name` out.
    Remove { name: Name },
}

impl Change {
    /// The name the change is about.
    pub fn name(&self) -> &Name {
        match self {
            Change::Index { name, .. } | Change::Remove { name } => name,
        }
    }
}

/// What an accepted change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The name was not indexed before and is now.
    Added,
    /// The name was indexed; its dependencies were replaced.
    Replaced,
    /// The name was indexed with exactly these dependencies, in this
    /// order: nothing changed.
    Kept,
    /// The name was indexed and is no longer.
    Removed,
    /// Removal of a name that was not indexed: nothing changed.
    Unchanged,
}

impl Effect {
    /// Whether the catalog changed, so the change needs writing.
    pub fn changed(self) -> bool {
        !matches!(self, Effect::Kept | Effect::Unchanged)
    }
}

/// One indexed name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    /// In the order given.
    dependencies: Vec<Name>,
    /// Every other indexed name that depends on this one.
    dependents: BTreeSet<Name>,
}

/// One name as `get` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub dependencies: Vec<Name>,
    /// In name order.
    pub dependents: Vec<Name>,
}

/// One page of names in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub names: Vec<Name>,
    /// The last name of this page when more names match after it.
    pub next_after: Option<Name>,
}

/// The catalog: every indexed name, its dependencies and its dependents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    entries: HashMap<Name, Entry>,
    /// The names of `entries`, in order.
    order: BTreeSet<Name>,
}

impl Graph {
    /// The catalog holding `entries` as stored, in any order. Fails with
    /// the first dependency that is not itself an entry: a store that
    /// holds one was not written by this catalog.
    pub fn restore(entries: impl IntoIterator<Item = (Name, Vec<Name>)>) -> Result<Self, Name> {
        let mut graph = Self::default();
        for (name, dependencies) in entries {
            let entry = Entry {
                dependencies,
                dependents: BTreeSet::new(),
            };
            graph.order.insert(name.clone());
            graph.entries.insert(name, entry);
        }
        let names: Vec<Name> = graph.entries.keys().cloned().collect();
        for name in names {
            let stored = graph
                .entries
                .get_mut(&name)
                .map(|e| std::mem::take(&mut e.dependencies))
                .unwrap_or_default();
            let mut dependencies = Vec::with_capacity(stored.len());
            for dependency in stored {
                let key = graph.key(&dependency).ok_or(dependency)?;
                if key != name
                    && let Some(entry) = graph.entries.get_mut(&key)
                {
                    entry.dependents.insert(name.clone());
                }
                dependencies.push(key);
            }
            if let Some(entry) = graph.entries.get_mut(&name) {
                entry.dependencies = dependencies;
            }
        }
        Ok(graph)
    }

    /// How many names are indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `name` is indexed.
    pub fn is_indexed(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// `name`'s dependencies and dependents, if it is indexed.
    pub fn get(&self, name: &str) -> Option<Described> {
        self.entries.get(name).map(|entry| Described {
            dependencies: entry.dependencies.clone(),
            dependents: entry.dependents.iter().cloned().collect(),
        })
    }

    /// Up to `limit` names starting with `prefix`, in order, after `after`
    /// if given.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Page {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut matching = self
            .order
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|name| name.as_str().starts_with(prefix));
        let names: Vec<Name> = matching.by_ref().take(limit).cloned().collect();
        let next_after = match matching.next() {
            Some(_) => names.last().cloned(),
            None => None,
        };
        Page { names, next_after }
    }

    /// Applies `change` if the rules allow it; otherwise changes nothing
    /// and says why.
    pub fn apply(&mut self, change: &Change) -> Result<Effect, DomainError> {
        match change {
            Change::Index { name, dependencies } => self.index(name, dependencies),
            Change::Remove { name } => self.remove(name),
        }
    }

    fn index(&mut self, name: &Name, dependencies: &[Name]) -> Result<Effect, DomainError> {
        let missing: Vec<&Name> = dependencies
            .iter()
            .filter(|d| !self.entries.contains_key(d.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(DomainError::MissingDependencies {
                name: name.to_string(),
                missing: listed(missing),
            });
        }
        if self
            .entries
            .get(name.as_str())
            .is_some_and(|entry| entry.dependencies == dependencies)
        {
            return Ok(Effect::Kept);
        }
        // Every dependency is an entry: mention it by the entry's name.
        let dependencies: Vec<Name> = dependencies
            .iter()
            .map(|d| self.key(d).unwrap_or_else(|| d.clone()))
            .collect();
        let name = self.key(name).unwrap_or_else(|| name.clone());
        let old = self
            .entries
            .get_mut(&name)
            .map(|entry| std::mem::take(&mut entry.dependencies));
        // A name is never its own dependent.
        for old in old.iter().flatten().filter(|d| **d != name) {
            if let Some(entry) = self.entries.get_mut(old) {
                entry.dependents.remove(&name);
            }
        }
        for dependency in dependencies.iter().filter(|d| **d != name) {
            if let Some(entry) = self.entries.get_mut(dependency) {
                entry.dependents.insert(name.clone());
            }
        }
        match self.entries.get_mut(&name) {
            Some(entry) => {
                entry.dependencies = dependencies;
                Ok(Effect::Replaced)
            }
            None => {
                let entry = Entry {
                    dependencies,
                    dependents: BTreeSet::new(),
                };
                self.order.insert(name.clone());
                self.entries.insert(name, entry);
                Ok(Effect::Added)
            }
        }
    }

    fn remove(&mut self, name: &Name) -> Result<Effect, DomainError> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(Effect::Unchanged);
        };
        if !entry.dependents.is_empty() {
            return Err(DomainError::HasDependents {
                name: name.to_string(),
                dependents: listed(entry.dependents.iter()),
            });
        }
        self.order.remove(name);
        if let Some(entry) = self.entries.remove(name) {
            for dependency in &entry.dependencies {
                if let Some(dependency) = self.entries.get_mut(dependency) {
                    dependency.dependents.remove(name);
                }
            }
        }
        Ok(Effect::Removed)
    }

    /// The entry's own copy of `name`, if indexed.
    fn key(&self, name: &Name) -> Option<Name> {
        self.entries.get_key_value(name).map(|(k, _)| k.clone())
    }
}

/// Names for a refusal: the first [`NAMES_SHOWN`], then how many more.
fn listed<'a>(names: impl IntoIterator<Item = &'a Name>) -> NameList {
    let mut shown = Vec::new();
    let mut more = 0;
    for name in names {
        if shown.len() < NAMES_SHOWN {
            shown.push(name.to_string());
        } else {
            more += 1;
        }
    }
    NameList { shown, more }
}

/// Names a refusal lists, the first few of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameList {
    pub shown: Vec<String>,
    /// How many more there are.
    pub more: usize,
}

impl fmt::Display for NameList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.shown.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("a valid name")
    }

    fn index(n: &str, dependencies: &[&str]) -> Change {
        Change::Index {
            name: name(n),
            dependencies: dependencies.iter().map(|d| name(d)).collect(),
        }
    }

    fn remove(n: &str) -> Change {
        Change::Remove { name: name(n) }
    }

    #[test]
    fn names_follow_the_rules() {
        #[track_caller]
        fn check(given: &str, valid: bool) {
            assert_eq!(Name::parse(given).is_ok(), valid, "{given:?}");
        }
        for valid in [
            "a",
            "gtk+",
            "libsigc++",
            "openssl@3",
            "python@3.12",
            "c-ares",
            "ñandú",
            "emacs☃elisp",
            "emacs=elisp",
            "combining-e\u{301}",
            "日本語",
            "∑-math",
            "Case",
            &"x".repeat(MAX_NAME_CHARS),
            &"é".repeat(MAX_NAME_CHARS),
        ] {
            check(valid, true);
        }
        for invalid in [
            "",
            "a|b",
            "a,b",
            "a b",
            "a\tb",
            "a\nb",
            "a\rb",
            "a\u{7}",
            "\u{a0}nbsp",
            "ideographic\u{3000}space",
            "zero\u{200b}width",
            "\u{feff}bom",
            "right\u{202e}to-left",
            "soft\u{ad}hyphen",
            "private\u{e000}use",
            "unassigned\u{378}",
            "not\u{ffff}a-character",
            "line\u{2028}separator",
            "next\u{85}line",
            &"x".repeat(MAX_NAME_CHARS + 1),
        ] {
            check(invalid, false);
        }
        assert_ne!(name("Case"), name("case"), "names are case-sensitive");
    }

    #[test]
    fn dependency_lists_skip_empty_entries_and_repeats() {
        #[track_caller]
        fn check(given: &str, expected: Result<&[&str], ()>) {
            let parsed = parse_dependencies(given.split(','));
            match expected {
                Ok(names) => assert_eq!(
                    parsed
                        .expect("valid")
                        .iter()
                        .map(Name::as_str)
                        .collect::<Vec<_>>(),
                    names,
                    "{given:?}"
                ),
                Err(()) => assert!(parsed.is_err(), "{given:?} is refused"),
            }
        }
        check("", Ok(&[]));
        check("a,b,", Ok(&["a", "b"]));
        check(",,a,,", Ok(&["a"]));
        check("b,a,b", Ok(&["b", "a"]));
        check("a,b c", Err(()));
        check("a,b|c", Err(()));
        let most = vec!["x"; MAX_DEPENDENCIES].join(",");
        check(&most, Ok(&["x"]));
        let over = (0..=MAX_DEPENDENCIES)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            parse_dependencies(over.split(',')),
            Err(DomainError::TooManyDependencies {
                max: MAX_DEPENDENCIES
            })
        );
    }

    /// Each step is applied in turn to one catalog: its outcome, then
    /// which names are indexed afterwards.
    #[test]
    fn the_rules_decide_every_change() {
        let mut graph = Graph::default();
        #[track_caller]
        fn check(
            graph: &mut Graph,
            change: Change,
            expected: Result<Effect, &str>,
            indexed: &[&str],
        ) {
            let outcome = graph.apply(&change);
            match expected {
                Ok(effect) => assert_eq!(outcome, Ok(effect), "{change:?}"),
                Err(message) => assert_eq!(
                    outcome.map_err(|e| e.to_string()),
                    Err(message.to_owned()),
                    "{change:?}"
                ),
            }
            let page = graph.list("", None, 100);
            let now: Vec<&str> = page.names.iter().map(Name::as_str).collect();
            assert_eq!(now, indexed, "indexed after {change:?}");
        }
        use Effect::*;
        let g = &mut graph;
        check(
            g,
            index("b", &["a"]),
            Err("cannot index \"b\": not indexed yet: \"a\""),
            &[],
        );
        check(g, index("a", &[]), Ok(Added), &["a"]);
        check(g, index("b", &["a"]), Ok(Added), &["a", "b"]);
        check(
            g,
            remove("a"),
            Err("cannot remove \"a\": indexed names depend on it: \"b\""),
            &["a", "b"],
        );
        // The same list again changes nothing; another replaces it: b no
        // longer holds a.
        check(g, index("b", &["a"]), Ok(Kept), &["a", "b"]);
        check(g, index("b", &[]), Ok(Replaced), &["a", "b"]);
        check(g, remove("a"), Ok(Removed), &["b"]);
        check(g, remove("a"), Ok(Unchanged), &["b"]);
        // A failed re-index keeps the old list.
        check(g, index("c", &["b"]), Ok(Added), &["b", "c"]);
        check(
            g,
            index("c", &["b", "x", "y"]),
            Err("cannot index \"c\": not indexed yet: \"x\", \"y\""),
            &["b", "c"],
        );
        check(
            g,
            remove("b"),
            Err("cannot remove \"b\": indexed names depend on it: \"c\""),
            &["b", "c"],
        );
        // A name never blocks its own removal.
        check(g, index("c", &["c", "b"]), Ok(Replaced), &["b", "c"]);
        check(g, remove("c"), Ok(Removed), &["b"]);
        check(g, remove("b"), Ok(Removed), &[]);
        // Names with + and non-ASCII, case-sensitive.
        check(g, index("gtk+", &[]), Ok(Added), &["gtk+"]);
        check(
            g,
            index("libsigc++", &["gtk+"]),
            Ok(Added),
            &["gtk+", "libsigc++"],
        );
        check(
            g,
            index("Ñandú", &["libsigc++"]),
            Ok(Added),
            &["gtk+", "libsigc++", "Ñandú"],
        );
        check(
            g,
            index("GTK+", &["Gtk+"]),
            Err("cannot index \"GTK+\": not indexed yet: \"Gtk+\""),
            &["gtk+", "libsigc++", "Ñandú"],
        );
        // Removal in the reverse order of dependence.
        check(
            g,
            remove("gtk+"),
            Err("cannot remove \"gtk+\": indexed names depend on it: \"libsigc++\""),
            &["gtk+", "libsigc++", "Ñandú"],
        );
        check(g, remove("Ñandú"), Ok(Removed), &["gtk+", "libsigc++"]);
        check(g, remove("libsigc++"), Ok(Removed), &["gtk+"]);
        check(g, remove("gtk+"), Ok(Removed), &[]);
        assert_eq!(graph.len(), 0);
    }

    #[test]
    fn get_shows_both_directions() {
        let mut graph = Graph::default();
        for change in [
            index("zlib", &[]),
            index("openssl@3", &[]),
            index("curl", &["openssl@3", "zlib"]),
            index("git", &["curl", "zlib"]),
        ] {
            graph.apply(&change).expect("indexed");
        }
        let described = |n: &str| {
            graph.get(n).map(|d| {
                let names = |v: Vec<Name>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
                (names(d.dependencies), names(d.dependents))
            })
        };
        assert_eq!(
            described("zlib"),
            Some((vec![], vec!["curl".into(), "git".into()]))
        );
        assert_eq!(
            described("curl"),
            Some((vec!["openssl@3".into(), "zlib".into()], vec!["git".into()]))
        );
        assert_eq!(described("svn"), None);
        assert!(graph.is_indexed("git") && !graph.is_indexed("Git"));
    }

    #[test]
    fn list_pages_through_a_prefix_in_order() {
        let mut graph = Graph::default();
        for n in ["lib2", "liba", "libb", "libc", "lia", "libz", "m", "l"] {
            graph.apply(&index(n, &[])).expect("indexed");
        }
        #[track_caller]
        fn check(
            graph: &Graph,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
            names: &[&str],
            next: Option<&str>,
        ) {
            let page = graph.list(prefix, after, limit);
            assert_eq!(
                page.names.iter().map(Name::as_str).collect::<Vec<_>>(),
                names
            );
            assert_eq!(page.next_after.as_ref().map(Name::as_str), next);
        }
        check(&graph, "lib", None, 2, &["lib2", "liba"], Some("liba"));
        check(
            &graph,
            "lib",
            Some("liba"),
            2,
            &["libb", "libc"],
            Some("libc"),
        );
        check(&graph, "lib", Some("libc"), 2, &["libz"], None);
        check(&graph, "lib", Some("libz"), 2, &[], None);
        // An `after` before the prefix starts at the prefix.
        check(&graph, "lib", Some("a"), 1, &["lib2"], Some("lib2"));
        check(&graph, "", None, 3, &["l", "lia", "lib2"], Some("lib2"));
        check(&graph, "x", None, 3, &[], None);
        check(&graph, "m", None, 1, &["m"], None);
    }

    #[test]
    fn a_restored_catalog_equals_the_one_that_was_stored() {
        let mut graph = Graph::default();
        for change in [
            index("a", &[]),
            index("b", &["a"]),
            index("c", &["a", "b"]),
            index("b", &["b", "a"]),
            index("d", &["c"]),
        ] {
            graph.apply(&change).expect("indexed");
        }
        // Stored in reverse order: dependents before their dependencies.
        let stored: Vec<(Name, Vec<Name>)> = graph
            .order
            .iter()
            .rev()
            .map(|n| (n.clone(), graph.entries[n].dependencies.clone()))
            .collect();
        assert_eq!(Graph::restore(stored), Ok(graph));
        assert_eq!(
            Graph::restore([(name("x"), vec![name("y")])]),
            Err(name("y")),
            "a dependency that is not stored"
        );
    }

    /// Names are kept once: a dependency shares its entry's string.
    #[test]
    fn names_are_interned() {
        let mut graph = Graph::default();
        graph.apply(&index("a", &[])).expect("indexed");
        graph.apply(&index("b", &["a"])).expect("indexed");
        let (key, _) = graph.entries.get_key_value("a").expect("a");
        let mention = &graph.entries["b"].dependencies[0];
        assert!(Arc::ptr_eq(&key.0, &mention.0));
    }
}
