//! The valid shapes of `#[idempotent]` (`tests/ui/pass`): each file compiles as a module of
//! this one test crate and its `main` runs as a test. They used to be trybuild cases, one
//! binary each (30 links of sqlx, redis-rs and tokio, 4–5 minutes on a busy 2-core machine);
//! here they cost one build of one test binary. Each file stays a complete program that also
//! compiles on its own (`fn main`, its own `use` lines), so a case can be checked by hand as
//! a user would write it. The compile-fail cases stay in trybuild (`ui.rs`).

#[path = "../ui/pass/dedup_table_claim_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod dedup_table_claim_fullest;
#[path = "../ui/pass/dedup_table_tx_sqlite.rs"]
#[allow(dead_code, clippy::all)]
mod dedup_table_tx_sqlite;
#[path = "../ui/pass/distributed_lock_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod distributed_lock_fullest;
#[path = "../ui/pass/distributed_lock_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod distributed_lock_minimal;
#[path = "../ui/pass/duration_floor.rs"]
#[allow(dead_code, clippy::all)]
mod duration_floor;
#[path = "../ui/pass/free_fn_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod free_fn_minimal;
#[path = "../ui/pass/generic_lifetimes_where.rs"]
#[allow(dead_code, clippy::all)]
mod generic_lifetimes_where;
#[path = "../ui/pass/generic_lock_and_token_store.rs"]
#[allow(dead_code, clippy::all)]
mod generic_lock_and_token_store;
#[path = "../ui/pass/hygiene_locals.rs"]
#[allow(dead_code, clippy::all)]
mod hygiene_locals;
#[path = "../ui/pass/hygiene_prelude.rs"]
#[allow(dead_code, clippy::all)]
mod hygiene_prelude;
#[path = "../ui/pass/impl_trait_args.rs"]
#[allow(dead_code, clippy::all)]
mod impl_trait_args;
#[path = "../ui/pass/method_arc_self.rs"]
#[allow(dead_code, clippy::all)]
mod method_arc_self;
#[path = "../ui/pass/method_mut_self.rs"]
#[allow(dead_code, clippy::all)]
mod method_mut_self;
#[path = "../ui/pass/method_ref_self.rs"]
#[allow(dead_code, clippy::all)]
mod method_ref_self;
#[path = "../ui/pass/one_line_bodies_and_arc_stores.rs"]
#[allow(dead_code, clippy::all)]
mod one_line_bodies_and_arc_stores;
#[path = "../ui/pass/optimistic_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod optimistic_fullest;
#[path = "../ui/pass/optimistic_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod optimistic_minimal;
#[path = "../ui/pass/pessimistic_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod pessimistic_fullest;
#[path = "../ui/pass/pessimistic_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod pessimistic_minimal;
#[path = "../ui/pass/select_before_insert_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod select_before_insert_fullest;
#[path = "../ui/pass/select_before_insert_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod select_before_insert_minimal;
#[path = "../ui/pass/spawn_send.rs"]
#[allow(dead_code, clippy::all)]
mod spawn_send;
#[path = "../ui/pass/state_machine_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod state_machine_fullest;
#[path = "../ui/pass/state_machine_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod state_machine_minimal;
#[path = "../ui/pass/terminal_policy.rs"]
#[allow(dead_code, clippy::all)]
mod terminal_policy;
#[path = "../ui/pass/token_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod token_fullest;
#[path = "../ui/pass/token_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod token_minimal;
#[path = "../ui/pass/trait_impl_method.rs"]
#[allow(dead_code, clippy::all)]
mod trait_impl_method;
#[path = "../ui/pass/tx_store_shapes.rs"]
#[allow(dead_code, clippy::all)]
mod tx_store_shapes;
#[path = "../ui/pass/unique_index_fullest.rs"]
#[allow(dead_code, clippy::all)]
mod unique_index_fullest;
#[path = "../ui/pass/unique_index_minimal.rs"]
#[allow(dead_code, clippy::all)]
mod unique_index_minimal;

#[test]
fn dedup_table_claim_fullest_compiles_and_runs() {
    dedup_table_claim_fullest::main();
}

#[test]
fn dedup_table_tx_sqlite_compiles_and_runs() {
    dedup_table_tx_sqlite::main();
}

#[test]
fn distributed_lock_fullest_compiles_and_runs() {
    distributed_lock_fullest::main();
}

#[test]
fn distributed_lock_minimal_compiles_and_runs() {
    distributed_lock_minimal::main();
}

#[test]
fn duration_floor_compiles_and_runs() {
    duration_floor::main();
}

#[test]
fn free_fn_minimal_compiles_and_runs() {
    free_fn_minimal::main();
}

#[test]
fn generic_lifetimes_where_compiles_and_runs() {
    generic_lifetimes_where::main();
}

#[test]
fn generic_lock_and_token_store_compiles_and_runs() {
    generic_lock_and_token_store::main();
}

#[test]
fn hygiene_locals_compiles_and_runs() {
    hygiene_locals::main();
}

#[test]
fn hygiene_prelude_compiles_and_runs() {
    hygiene_prelude::main();
}

#[test]
fn impl_trait_args_compiles_and_runs() {
    impl_trait_args::main();
}

#[test]
fn method_arc_self_compiles_and_runs() {
    method_arc_self::main();
}

#[test]
fn method_mut_self_compiles_and_runs() {
    method_mut_self::main();
}

#[test]
fn method_ref_self_compiles_and_runs() {
    method_ref_self::main();
}

#[test]
fn one_line_bodies_and_arc_stores_compiles_and_runs() {
    one_line_bodies_and_arc_stores::main();
}

#[test]
fn optimistic_fullest_compiles_and_runs() {
    optimistic_fullest::main();
}

#[test]
fn optimistic_minimal_compiles_and_runs() {
    optimistic_minimal::main();
}

#[test]
fn pessimistic_fullest_compiles_and_runs() {
    pessimistic_fullest::main();
}

#[test]
fn pessimistic_minimal_compiles_and_runs() {
    pessimistic_minimal::main();
}

#[test]
fn select_before_insert_fullest_compiles_and_runs() {
    select_before_insert_fullest::main();
}

#[test]
fn select_before_insert_minimal_compiles_and_runs() {
    select_before_insert_minimal::main();
}

#[test]
fn spawn_send_compiles_and_runs() {
    spawn_send::main();
}

#[test]
fn state_machine_fullest_compiles_and_runs() {
    state_machine_fullest::main();
}

#[test]
fn state_machine_minimal_compiles_and_runs() {
    state_machine_minimal::main();
}

#[test]
fn token_fullest_compiles_and_runs() {
    token_fullest::main();
}

#[test]
fn token_minimal_compiles_and_runs() {
    token_minimal::main();
}

#[test]
fn trait_impl_method_compiles_and_runs() {
    trait_impl_method::main();
}

#[test]
fn tx_store_shapes_compiles_and_runs() {
    tx_store_shapes::main();
}

#[test]
fn unique_index_fullest_compiles_and_runs() {
    unique_index_fullest::main();
}

#[test]
fn unique_index_minimal_compiles_and_runs() {
    unique_index_minimal::main();
}

#[test]
fn terminal_policy_compiles_and_runs() {
    terminal_policy::main();
}

/// Every file in `tests/ui/pass` is a module of this crate: a case added there and not here
/// would never be compiled.
#[test]
fn every_pass_case_is_a_module_here() {
    let here = include_str!("ui_pass.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/pass");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/ui/pass") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".rs") && !here.contains(&format!("\"../ui/pass/{name}\"")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "pass cases not compiled by ui_pass.rs: {missing:?}"
    );
}
