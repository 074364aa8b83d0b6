//! The operations of the process: every `#[idempotent]` function with a stored record
//! (`dedup_table`, `distributed_lock`, `token`), registered at link time, and the check that no
//! two of them share an operation name.
//!
//! The operation name is the first part of the storage key, so two functions with one name share
//! records: the second replays the first one's responses and its own body never runs. The
//! default name is `module_path!()::fn_name`, which cannot tell apart same-named methods of two
//! types (or two impls of one type or trait) in one module, and an explicit `name = "..."` can be
//! written twice. Each annotated function therefore registers its [`Operation`] with the
//! [`inventory`] crate (a static per function, collected before `main` runs); the first call of
//! any of them computes once per process which names more than one function registered, and a
//! call of a function whose name is shared returns [`Error::OperationNameCollision`] before
//! touching the store. Call [`check_operation_names`] at startup (or in a unit test) to fail
//! before the first request; [`operations`] lists them all.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// One `#[idempotent]` function with a stored record: its operation name and where it is
/// defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Operation {
    /// The operation name, the first part of the storage key: `name = "..."`, or by default
    /// `module_path!()::fn_name` (e.g. `"orders::service::place"`).
    pub name: &'static str,
    /// The path of the source file that defines the function, as `file!()` gives it.
    pub file: &'static str,
    /// The line of the function's name in `file` (1-based); for a function written by a
    /// `macro_rules!` macro, the line of that macro's outermost call.
    pub line: u32,
    /// The column of the function's name in `file` (1-based), or of that macro call.
    pub column: u32,
    /// The function's name, without module or type.
    pub function: &'static str,
}

impl fmt::Display for Operation {
    /// `fn place at src/orders.rs:12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fn {} at {}:{}", self.function, self.file, self.line)
    }
}

/// Every registered operation, in order of name, then file, line and column.
///
/// For golden tests that pin the names (a renamed function or a moved module changes its
/// default name, and its stored records become unreachable) and for operators listing what a
/// process stores. Empty on a platform [`inventory`] does not support.
pub fn operations() -> Vec<Operation> {
    let mut all: Vec<Operation> = inventory::iter::<Registered>
        .into_iter()
        .map(|registered| registered.0.operation)
        .collect();
    all.sort_unstable();
    all
}

/// `Ok` when every registered operation has a name of its own; otherwise the
/// [`Error::OperationNameCollision`] of the first shared name (in name order), which lists the
/// functions sharing it.
///
/// Each call of a colliding function returns the same error anyway, before any store access;
/// calling this at startup (or in a unit test of the binary) reports it before the first
/// request. Fix it by writing a distinct `name = "..."` on each of the functions, and run the
/// check again for the next shared name, if any.
pub fn check_operation_names() -> Result<(), Error> {
    match collisions().iter().min_by_key(|(name, _)| **name) {
        Some((&name, sites)) => Err(collision(name, sites)),
        None => Ok(()),
    }
}

/// The names registered by more than one function, with those functions (sorted); computed
/// once per process.
fn collisions() -> &'static HashMap<&'static str, Vec<Operation>> {
    static COLLISIONS: OnceLock<HashMap<&'static str, Vec<Operation>>> = OnceLock::new();
    COLLISIONS.get_or_init(|| {
        let mut by_name: HashMap<&'static str, Vec<Operation>> = HashMap::new();
        for operation in operations() {
            by_name.entry(operation.name).or_default().push(operation);
        }
        by_name.retain(|_, sites| sites.len() > 1);
        by_name
    })
}

/// The error for `name`, shared by `sites`.
fn collision(name: &'static str, sites: &[Operation]) -> Error {
    Error::OperationNameCollision {
        name,
        sites: sites.to_vec(),
    }
}

/// The text of [`Error::OperationNameCollision`]: `fn a at f.rs:1, fn b at f.rs:9`. Functions
/// registered at one position were written by one `macro_rules!` call (`line!()` and
/// `column!()` give its position for all of them): they are listed together, `fn go and fn go,
/// both defined by the macro call at f.rs:60:5`, so that the list does not read as one site
/// twice; a site that shares its line with another one gets its column too. `sites` is sorted,
/// so sites at one position are adjacent.
pub(crate) fn list_sites(sites: &[Operation]) -> String {
    let mut groups: Vec<&[Operation]> = Vec::new();
    let mut rest = sites;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|o| (o.file, o.line, o.column) == (first.file, first.line, first.column))
            .count();
        let (group, tail) = rest.split_at(same);
        groups.push(group);
        rest = tail;
    }
    groups
        .into_iter()
        .map(|group| match group {
            // Another site on this line (another macro call): the column tells them apart.
            [one]
                if sites.iter().any(|o| {
                    (o.file, o.line) == (one.file, one.line) && o.column != one.column
                }) =>
            {
                format!("{one}:{}", one.column)
            }
            [one] => one.to_string(),
            [first, ..] => {
                let functions: Vec<String> =
                    group.iter().map(|o| format!("fn {}", o.function)).collect();
                let (init, last) = functions.split_at(functions.len() - 1);
                format!(
                    "{} and {}, {} defined by the macro call at {}:{}:{}",
                    init.join(", "),
                    last.concat(),
                    if group.len() == 2 { "both" } else { "all" },
                    first.file,
                    first.line,
                    first.column
                )
            }
            [] => String::new(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registration of one `#[idempotent]` function: a `static` in the function's expansion,
/// with the result of its name check cached, so that a call costs one atomic load.
#[doc(hidden)]
#[derive(Debug)]
pub struct OperationSite {
    /// The function.
    operation: Operation,
    /// Set once the name was found to be the function's own.
    unique: AtomicBool,
}

impl OperationSite {
    /// The site of the function `function` named `name`, whose name is at `file:line:column`.
    pub const fn new(
        name: &'static str,
        function: &'static str,
        file: &'static str,
        line: u32,
        column: u32,
    ) -> Self {
        OperationSite {
            operation: Operation {
                name,
                file,
                line,
                column,
                function,
            },
            unique: AtomicBool::new(false),
        }
    }

    /// `Ok` when no other registered function has this one's name, otherwise
    /// [`Error::OperationNameCollision`]. Called first by every call of the function.
    #[inline]
    pub fn check(&'static self) -> Result<(), Error> {
        if self.unique.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow()
    }

    /// The first check of this site (or a check of a colliding one).
    #[cold]
    fn check_slow(&self) -> Result<(), Error> {
        let name = self.operation.name;
        match collisions().get(name) {
            Some(sites) => Err(collision(name, sites)),
            None => {
                self.unique.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// What `#[idempotent]` submits to [`inventory`]: a reference to the function's
/// [`OperationSite`] static.
#[doc(hidden)]
pub struct Registered(pub &'static OperationSite);

inventory::collect!(Registered);

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation named `name`, of function `function`, at `file:line:column`.
    fn op(name: &'static str, function: &'static str, line: u32, column: u32) -> Operation {
        Operation {
            name,
            file: "src/main.rs",
            line,
            column,
            function,
        }
    }

    /// Distinct positions are listed as `file:line`, one site each.
    #[test]
    fn sites_at_distinct_positions() {
        let sites = [op("m::go", "go", 12, 14), op("m::go", "go", 30, 14)];
        assert_eq!(
            list_sites(&sites),
            "fn go at src/main.rs:12, fn go at src/main.rs:30"
        );
    }

    /// Functions one `macro_rules!` call writes share its position: one entry naming the call
    /// with its column, not the same site twice.
    #[test]
    fn sites_written_by_one_macro_call() {
        let two = [op("m::go", "go", 60, 1), op("m::go", "go", 60, 1)];
        assert_eq!(
            list_sites(&two),
            "fn go and fn go, both defined by the macro call at src/main.rs:60:1"
        );
        let error = collision("m::go", &two);
        assert_eq!(
            error.to_string(),
            "operation name \"m::go\" is used by 2 #[idempotent] functions: fn go and fn go, both defined by the macro call at src/main.rs:60:1; they would share stored records: write name = \"...\" on each to give them distinct names"
        );

        // Three at one call (two of them explicit names), next to one elsewhere; a macro call
        // on the same line at another column is another call.
        let mut mixed = vec![
            op("pay", "card", 60, 5),
            op("pay", "wire", 9, 1),
            op("pay", "cash", 60, 5),
            op("pay", "card", 60, 5),
            op("pay", "gift", 60, 40),
        ];
        mixed.sort_unstable();
        assert_eq!(
            list_sites(&mixed),
            "fn wire at src/main.rs:9, fn card, fn card and fn cash, all defined by the macro call at src/main.rs:60:5, fn gift at src/main.rs:60:40"
        );
    }
}
