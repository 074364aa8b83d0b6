//! Operation names (issue 11, items 1–3): the default name of every annotated function is
//! `module_path!()::fn_name`, a compile-time constant pinned here for each kind of function;
//! and functions that share a name — which would share stored records — are refused at their
//! first call with `Error::OperationNameCollision`, before any store access, and reported by
//! `check_operation_names()`.
//!
//! Every colliding fixture of the suite lives in this one test binary (the check is per
//! process), next to non-colliding operations that must keep working.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use idempotent_runtime::{
    ClaimStore, Disposition, Error, KeyBuilder, MemoryStore, Operation, check_operation_names,
    idempotent, observe, operations,
};
use idempotent_tests::AppError;

/// This file, as `file!()` spells it in the registered operations.
const FILE: &str = file!();
/// This file's text, to find the line of each function.
const SOURCE: &str = include_str!("operation_names.rs");

/// The 1-based numbers of the lines of this file that contain `needle`.
fn lines_of(needle: &str) -> Vec<u32> {
    SOURCE
        .lines()
        .zip(1..)
        .filter(|(line, _)| line.contains(needle))
        .map(|(_, number)| number)
        .collect()
}

/// The registered operations named `name`.
fn named(name: &str) -> Vec<Operation> {
    operations()
        .into_iter()
        .filter(|o| o.name == name)
        .collect()
}

/// Whether `store` holds a record for operation `name` and key `id` (no scope).
async fn stored(store: &MemoryStore, name: &str, id: &str) -> bool {
    let key = KeyBuilder::new(name).part(id).finish().unwrap();
    store.read_record(&key).await.unwrap().is_some()
}

// ------------------------------------------------------------------ golden names (no collision)

/// A free function.
#[idempotent(
    strategy = "dedup_table",
    key = "id",
    store = "store",
    fingerprint = "id"
)]
async fn place(store: &MemoryStore, runs: &AtomicU32, id: &str) -> Result<String, AppError> {
    runs.fetch_add(1, SeqCst);
    Ok(format!("placed {id}"))
}

/// A type with an annotated method.
struct Shop {
    store: MemoryStore,
    runs: AtomicU32,
}

impl Shop {
    /// A method.
    #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
    async fn buy(&self, id: &str) -> Result<String, AppError> {
        self.runs.fetch_add(1, SeqCst);
        Ok(format!("bought {id}"))
    }
}

/// A generic type.
struct Basket<T> {
    store: MemoryStore,
    item: T,
}

impl<T: ToString + Send + Sync> Basket<T> {
    /// A method of a generic type: one operation, however many instantiations.
    #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
    async fn add(&self, id: &str) -> Result<String, AppError> {
        Ok(format!("added {} to {id}", self.item.to_string()))
    }
}

/// A trait.
trait Ship {
    async fn ship(&self, id: &str) -> Result<String, AppError>;
}

/// A generic trait.
trait Handle<M> {
    async fn handle_one(&self, id: &str) -> Result<String, AppError>;
}

/// A message kind of [`Handle`].
struct Orders;

/// Implements both traits.
struct Courier {
    store: MemoryStore,
}

impl Ship for Courier {
    /// A trait-impl method.
    #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
    async fn ship(&self, id: &str) -> Result<String, AppError> {
        Ok(format!("shipped {id}"))
    }
}

impl Handle<Orders> for Courier {
    /// A generic trait's impl method.
    #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
    async fn handle_one(&self, id: &str) -> Result<String, AppError> {
        Ok(format!("handled order {id}"))
    }
}

/// Nested modules.
mod billing {
    pub mod invoices {
        use super::super::*;

        /// A function in a nested module.
        #[idempotent(strategy = "dedup_table", key = "id", store = "store")]
        pub async fn issue(store: &MemoryStore, id: &str) -> Result<String, AppError> {
            Ok(format!("issued {id}"))
        }
    }
}

/// An explicit name.
#[idempotent(
    strategy = "dedup_table",
    key = "id",
    store = "store",
    name = "billing.refund"
)]
async fn refund(store: &MemoryStore, id: &str) -> Result<String, AppError> {
    Ok(format!("refunded {id}"))
}

// ------------------------------------------------------------------------ collision fixtures

/// Issue 11 item 1: two types with the same name in different modules, each with a `ship`
/// annotated alike. The module path tells them apart.
mod v1 {
    use super::*;

    pub struct OrderService {
        pub store: MemoryStore,
        pub runs: AtomicU32,
    }

    impl OrderService {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn ship(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("v1 shipped {id}"))
        }
    }
}

/// See [`v1`].
mod v2 {
    use super::*;

    pub struct OrderService {
        pub store: MemoryStore,
        pub runs: AtomicU32,
    }

    impl OrderService {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn ship(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("v2 shipped {id}"))
        }
    }
}

/// Issue 11 item 2: one generic type, `impl Handler<Orders>` and `impl Handler<Refunds>`, each
/// with `fn handle`, in one module: the same default name.
mod handlers {
    use super::*;

    pub struct Orders;
    pub struct Refunds;

    pub struct Handler<M> {
        pub store: MemoryStore,
        pub runs: AtomicU32,
        pub kind: std::marker::PhantomData<M>,
    }

    impl Handler<Orders> {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn handle(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("order {id}"))
        }
    }

    impl Handler<Refunds> {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn handle(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("refund {id}"))
        }
    }
}

/// Two types in one module with a same-named method: the same default name.
mod same_module {
    use super::*;

    pub struct Refunds {
        pub store: MemoryStore,
        pub runs: AtomicU32,
    }
    pub struct Charges {
        pub store: MemoryStore,
        pub runs: AtomicU32,
    }

    impl Refunds {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn apply(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("refunded {id}"))
        }
    }

    impl Charges {
        #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
        pub async fn apply(&self, id: &str) -> Result<String, AppError> {
            self.runs.fetch_add(1, SeqCst);
            Ok(format!("charged {id}"))
        }
    }
}

/// Two functions with the same explicit name.
mod explicit {
    use super::*;

    #[idempotent(
        strategy = "dedup_table",
        key = "id",
        store = "store",
        fingerprint = "id",
        name = "payments.pay"
    )]
    pub async fn pay_card(
        store: &MemoryStore,
        runs: &AtomicU32,
        id: &str,
    ) -> Result<String, AppError> {
        runs.fetch_add(1, SeqCst);
        Ok(format!("card {id}"))
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "id",
        store = "store",
        fingerprint = "id",
        name = "payments.pay"
    )]
    pub async fn pay_wire(
        store: &MemoryStore,
        runs: &AtomicU32,
        id: &str,
    ) -> Result<String, AppError> {
        runs.fetch_add(1, SeqCst);
        Ok(format!("wire {id}"))
    }
}

/// Two methods one `macro_rules!` call writes (the tester's report): one default name, and one
/// position, the macro call's (`line!()`/`column!()` give the outermost call's). The error lists
/// them as that call, not as one site twice.
mod written_by_macro {
    use super::*;

    pub struct Cards {
        pub store: MemoryStore,
    }
    pub struct Wires {
        pub store: MemoryStore,
    }

    macro_rules! payers {
        ($($ty:ident),+) => {$(
            impl $ty {
                #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
                pub async fn go(&self, id: &str) -> Result<String, AppError> {
                    Ok(format!("paid {id}"))
                }
            }
        )+};
    }

    payers!(Cards, Wires);
}

/// The collision error's text for `name` shared by the functions `function` whose lines
/// contain `needle` (in line order).
fn collision_message(name: &str, function: &str, needle: &str) -> String {
    let sites: Vec<String> = lines_of(needle)
        .into_iter()
        .map(|line| format!("fn {function} at {FILE}:{line}"))
        .collect();
    assert_eq!(sites.len(), 2, "two definitions of {function}");
    format!(
        "operation name {name:?} is used by 2 #[idempotent] functions: {}; they would share stored records: write name = \"...\" on each to give them distinct names",
        sites.join(", ")
    )
}

/// Asserts that `result` is the collision of `name` between the two `function`s whose lines
/// contain `needle`.
fn assert_collision<T: std::fmt::Debug>(
    result: Result<T, AppError>,
    name: &str,
    function: &str,
    needle: &str,
) {
    let Err(AppError::Idempotency(error)) = &result else {
        panic!("expected OperationNameCollision for {name}: {result:?}")
    };
    let Error::OperationNameCollision {
        name: got_name,
        sites,
    } = error
    else {
        panic!("expected OperationNameCollision for {name}: {error:?}")
    };
    assert_eq!(*got_name, name);
    assert_eq!(
        sites.iter().map(|s| s.line).collect::<Vec<_>>(),
        lines_of(needle)
    );
    assert!(
        sites
            .iter()
            .all(|s| s.function == function && s.file == FILE),
        "{sites:?}"
    );
    assert_eq!(error.to_string(), collision_message(name, function, needle));
}

// ---------------------------------------------------------------------------------- the tests

/// Every operation defined in this file, with its exact name, function, file and line; the
/// sites point at the function's name. (The binary also links the test kit's own operations,
/// defined under `tests/src`, which are not this file's.)
#[test]
fn golden_names_of_every_registered_operation() {
    let all: Vec<_> = operations()
        .into_iter()
        .filter(|o| o.file == FILE)
        .collect();
    let got: Vec<(&str, &str)> = all.iter().map(|o| (o.name, o.function)).collect();
    assert_eq!(
        got,
        [
            ("billing.refund", "refund"),
            ("operation_names::add", "add"),
            ("operation_names::billing::invoices::issue", "issue"),
            ("operation_names::buy", "buy"),
            ("operation_names::handle_one", "handle_one"),
            ("operation_names::handlers::handle", "handle"),
            ("operation_names::handlers::handle", "handle"),
            ("operation_names::place", "place"),
            ("operation_names::same_module::apply", "apply"),
            ("operation_names::same_module::apply", "apply"),
            ("operation_names::ship", "ship"),
            ("operation_names::v1::ship", "ship"),
            ("operation_names::v2::ship", "ship"),
            ("operation_names::written_by_macro::go", "go"),
            ("operation_names::written_by_macro::go", "go"),
            ("payments.pay", "pay_card"),
            ("payments.pay", "pay_wire"),
        ]
    );
    let source: Vec<&str> = SOURCE.lines().collect();
    // (The functions a macro writes are at the macro call: see the test of their collision.)
    for op in all
        .iter()
        .filter(|op| !op.name.contains("written_by_macro"))
    {
        assert_eq!(op.file, FILE, "{op:?}");
        let line = source[op.line as usize - 1];
        let at = &line[op.column as usize - 1..];
        assert!(
            at.starts_with(op.function) && line.contains("async fn "),
            "{op:?} points at the function's name: {line:?}"
        );
    }
    let free = named("operation_names::place");
    assert_eq!(free[0].line, lines_of(concat!("async fn ", "place("))[0]);
    assert_eq!(
        free[0].to_string(),
        format!("fn place at {FILE}:{}", free[0].line)
    );
}

/// The listed name is the one in the storage key: each kind of function stores its record
/// under it, and calls again replay.
#[tokio::test]
async fn golden_names_are_the_storage_keys_names() {
    let store = MemoryStore::new();
    let runs = AtomicU32::new(0);
    place(&store, &runs, "p-1").await.unwrap();
    assert!(stored(&store, "operation_names::place", "p-1").await);

    let shop = Shop {
        store: store.clone(),
        runs: AtomicU32::new(0),
    };
    shop.buy("b-1").await.unwrap();
    assert!(stored(&store, "operation_names::buy", "b-1").await);

    // Two instantiations of the generic type: one operation, one record per key.
    let numbers = Basket {
        store: store.clone(),
        item: 7_u8,
    };
    let words = Basket {
        store: store.clone(),
        item: "pear".to_owned(),
    };
    assert_eq!(numbers.add("a-1").await.unwrap(), "added 7 to a-1");
    assert!(stored(&store, "operation_names::add", "a-1").await);
    let (again, how) = observe(words.add("a-1")).await;
    assert_eq!(
        (again.unwrap(), how),
        ("added 7 to a-1".to_owned(), Some(Disposition::Replayed)),
        "Basket<u8>::add and Basket<String>::add are one operation"
    );
    assert_eq!(named("operation_names::add").len(), 1);

    let courier = Courier {
        store: store.clone(),
    };
    courier.ship("s-1").await.unwrap();
    assert!(stored(&store, "operation_names::ship", "s-1").await);
    courier.handle_one("h-1").await.unwrap();
    assert!(stored(&store, "operation_names::handle_one", "h-1").await);

    billing::invoices::issue(&store, "i-1").await.unwrap();
    assert!(stored(&store, "operation_names::billing::invoices::issue", "i-1").await);

    refund(&store, "r-1").await.unwrap();
    assert!(stored(&store, "billing.refund", "r-1").await);

    // And nothing under another name.
    assert!(!stored(&store, "operation_names::place", "b-1").await);
}

/// Issue 11 item 1: `v1::OrderService::ship` and `v2::OrderService::ship` on one store are two
/// operations: `v2.ship("A")` runs v2's body instead of replaying v1's response.
#[tokio::test]
async fn same_type_name_in_two_modules_are_two_operations() {
    let store = MemoryStore::new();
    let v1 = v1::OrderService {
        store: store.clone(),
        runs: AtomicU32::new(0),
    };
    let v2 = v2::OrderService {
        store: store.clone(),
        runs: AtomicU32::new(0),
    };
    let (a1, how1) = observe(v1.ship("A")).await;
    let (a2, how2) = observe(v2.ship("A")).await;
    assert_eq!(a1.unwrap(), "v1 shipped A");
    assert_eq!(a2.unwrap(), "v2 shipped A");
    assert_eq!(
        (how1, how2),
        (Some(Disposition::Executed), Some(Disposition::Executed))
    );
    assert_eq!(
        (v1.runs.load(SeqCst), v2.runs.load(SeqCst)),
        (1, 1),
        "each body ran once"
    );
    // Each replays its own response.
    let (again, how) = observe(v2.ship("A")).await;
    assert_eq!(
        (again.unwrap(), how),
        ("v2 shipped A".to_owned(), Some(Disposition::Replayed))
    );
    assert_eq!(v2.runs.load(SeqCst), 1);
    assert!(stored(&store, "operation_names::v1::ship", "A").await);
    assert!(stored(&store, "operation_names::v2::ship", "A").await);
}

/// Issue 11 item 2: `Handler<Orders>::handle` and `Handler<Refunds>::handle` in one module
/// have one default name: every call of either gets `OperationNameCollision` naming both
/// definitions, no body runs and nothing is stored; other operations on the store still work.
#[tokio::test]
async fn two_impls_of_one_generic_type_collide() {
    use handlers::{Handler, Orders, Refunds};
    let store = MemoryStore::new();
    let orders = Handler::<Orders> {
        store: store.clone(),
        runs: AtomicU32::new(0),
        kind: std::marker::PhantomData,
    };
    let refunds = Handler::<Refunds> {
        store: store.clone(),
        runs: AtomicU32::new(0),
        kind: std::marker::PhantomData,
    };
    let name = "operation_names::handlers::handle";
    let needle = concat!("async fn ", "handle(");
    for _ in 0..2 {
        let (result, how) = observe(orders.handle("A")).await;
        assert_eq!(how, None, "neither executed nor replayed");
        assert_collision(result, name, "handle", needle);
        assert_collision(refunds.handle("A").await, name, "handle", needle);
    }
    assert_eq!(
        (orders.runs.load(SeqCst), refunds.runs.load(SeqCst)),
        (0, 0),
        "no body ran"
    );
    assert!(!stored(&store, name, "A").await, "nothing was stored");
    let runs = AtomicU32::new(0);
    assert_eq!(place(&store, &runs, "A").await.unwrap(), "placed A");
    assert_eq!(runs.load(SeqCst), 1);
}

/// Two types' same-named methods in one module share the default name: both collide.
#[tokio::test]
async fn same_named_methods_of_two_types_in_one_module_collide() {
    let store = MemoryStore::new();
    let refunds = same_module::Refunds {
        store: store.clone(),
        runs: AtomicU32::new(0),
    };
    let charges = same_module::Charges {
        store: store.clone(),
        runs: AtomicU32::new(0),
    };
    let name = "operation_names::same_module::apply";
    let needle = concat!("async fn ", "apply(");
    assert_collision(refunds.apply("order-1").await, name, "apply", needle);
    assert_collision(charges.apply("order-1").await, name, "apply", needle);
    assert_eq!(
        (refunds.runs.load(SeqCst), charges.runs.load(SeqCst)),
        (0, 0)
    );
    assert!(!stored(&store, name, "order-1").await);
}

/// Two methods one `macro_rules!` call writes collide, and the error names the macro call once,
/// with its column: "fn go and fn go, both defined by the macro call at file:line:column".
#[tokio::test]
async fn two_methods_written_by_one_macro_call_collide() {
    let store = MemoryStore::new();
    let cards = written_by_macro::Cards {
        store: store.clone(),
    };
    let wires = written_by_macro::Wires {
        store: store.clone(),
    };
    let name = "operation_names::written_by_macro::go";
    let line = lines_of(concat!("payers!", "(Cards"))[0];
    let column = SOURCE
        .lines()
        .nth(line as usize - 1)
        .unwrap()
        .find("payers!")
        .unwrap()
        + 1;
    let sites = named(name);
    assert_eq!(
        sites
            .iter()
            .map(|s| (s.line, s.column as usize))
            .collect::<Vec<_>>(),
        [(line, column), (line, column)],
        "both at the macro call"
    );
    let expected = format!(
        "operation name {name:?} is used by 2 #[idempotent] functions: fn go and fn go, both defined by the macro call at {FILE}:{line}:{column}; they would share stored records: write name = \"...\" on each to give them distinct names"
    );
    for result in [cards.go("A").await, wires.go("A").await] {
        match result {
            Err(AppError::Idempotency(error @ Error::OperationNameCollision { .. })) => {
                assert_eq!(error.to_string(), expected)
            }
            other => panic!("expected OperationNameCollision: {other:?}"),
        }
    }
    assert!(!stored(&store, name, "A").await, "nothing was stored");
}

/// Two functions with the same explicit `name` collide too.
#[tokio::test]
async fn two_identical_explicit_names_collide() {
    let store = MemoryStore::new();
    let runs = AtomicU32::new(0);
    let name = "payments.pay";
    for result in [
        explicit::pay_card(&store, &runs, "p-1").await,
        explicit::pay_wire(&store, &runs, "p-1").await,
    ] {
        match result {
            Err(AppError::Idempotency(Error::OperationNameCollision { name: got, sites })) => {
                assert_eq!(got, name);
                let functions: Vec<_> = sites.iter().map(|s| s.function).collect();
                assert_eq!(functions, ["pay_card", "pay_wire"]);
                assert_eq!(
                    sites.iter().map(|s| s.line).collect::<Vec<_>>(),
                    [
                        lines_of(concat!("async fn ", "pay_card("))[0],
                        lines_of(concat!("async fn ", "pay_wire("))[0],
                    ]
                );
            }
            other => panic!("expected OperationNameCollision: {other:?}"),
        }
    }
    assert_eq!(runs.load(SeqCst), 0);
    assert!(!stored(&store, name, "p-1").await);
}

/// `check_operation_names()` reports the first shared name (in name order) with its sites;
/// `operations()` lists every shared name twice.
#[test]
fn check_operation_names_reports_the_collisions() {
    let error = check_operation_names().unwrap_err();
    assert_eq!(
        error.to_string(),
        collision_message(
            "operation_names::handlers::handle",
            "handle",
            concat!("async fn ", "handle(")
        )
    );
    for name in [
        "operation_names::handlers::handle",
        "operation_names::same_module::apply",
        "operation_names::written_by_macro::go",
        "payments.pay",
    ] {
        assert_eq!(named(name).len(), 2, "{name}");
    }
}
