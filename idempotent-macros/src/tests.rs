//! Unit tests of the whole expansion: `expand(attr, item)` on valid and
//! invalid inputs.

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;

use crate::expand::expand;

/// The messages of every `compile_error!` in `tokens`, in order.
fn compile_errors(tokens: &TokenStream) -> Vec<String> {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let mut messages = Vec::new();
    for window in trees.windows(3) {
        if let [
            TokenTree::Ident(ident),
            TokenTree::Punct(bang),
            TokenTree::Group(group),
        ] = window
            && ident == "compile_error"
            && bang.as_char() == '!'
        {
            let message: syn::LitStr =
                syn::parse2(group.stream()).expect("compile_error! holds a string literal");
            messages.push(message.value());
        }
    }
    messages
}

/// Expands and returns (output text, error messages).
fn run(attr: TokenStream, item: TokenStream) -> (String, Vec<String>) {
    let output = expand(attr, item);
    let errors = compile_errors(&output);
    (output.to_string(), errors)
}

/// Expands input that must be valid; returns the output text.
fn ok(attr: TokenStream, item: TokenStream) -> String {
    let output = expand(attr, item);
    let errors = compile_errors(&output);
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    syn::parse2::<syn::ItemFn>(output.clone()).expect("the wrapper is one function");
    output.to_string()
}

/// Expands input that must be invalid; returns the messages after checking that
/// the original function is still emitted.
fn errs(attr: TokenStream, item: TokenStream) -> Vec<String> {
    let (text, errors) = run(attr, item);
    assert!(!errors.is_empty(), "expected errors, got: {text}");
    assert!(
        text.contains("fn place"),
        "the original function must still be emitted: {text}"
    );
    errors
}

/// Asserts that exactly one message is produced and returns it.
fn one_err(attr: TokenStream, item: TokenStream) -> String {
    let errors = errs(attr, item);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// A plain valid function for option tests.
fn place() -> TokenStream {
    quote! {
        pub async fn place(pool: &PgPool, req: PlaceOrder) -> Result<Receipt, AppError> {
            insert(pool, &req).await
        }
    }
}

#[test]
fn dedup_table_claim_mode() {
    let out = ok(quote!(strategy = "dedup_table", key = "req.id"), place());
    assert!(
        out.contains(
            "< Receipt as :: idempotent_runtime :: __private :: ResponseType > :: replaying ("
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "strategy : :: idempotent_runtime :: __private :: DedupTable { store : :: idempotent_runtime :: __private :: AsClaimStore :: as_claim_store (& * pool) , options : :: idempotent_runtime :: __private :: DedupTableOptions {"
        ),
        "{out}"
    );
    assert!(!out.contains("run_in_tx"), "{out}");
    assert!(out.contains(":: idempotent_runtime :: __private :: KeyBuilder :: new"));
    assert!(out.contains(":: core :: concat ! (:: core :: module_path ! () , \"::\" , \"place\")"));
    assert!(
        out.contains(
            ":: idempotent_runtime :: __private :: KeyPartArg :: add_part (& (req . id) ,"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "Serialize :: __idempotent_arg (& (req) , __idempotent_fingerprinter , \"req\")"
        ),
        "{out}"
    );
    assert!(
        !out.contains("\"pool\""),
        "the store is not fingerprinted: {out}"
    );
    assert!(out.contains("& * pool"), "{out}");
    assert!(
        out.contains("async | _ | -> Result < Receipt , AppError > {"),
        "{out}"
    );
    assert!(out.contains(". await"));
    assert!(out.contains("pub async fn place (pool : & PgPool , req : PlaceOrder)"));
    assert!(!out.contains("move"));
}

#[test]
fn dedup_table_transactional_mode() {
    let out = ok(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(pool: &PgPool, req: &PlaceOrder, #[tx] tx: &mut PgConnection) -> Result<(), AppError> {
                sqlx::query("...").execute(&mut *tx).await?;
                Ok(())
            }
        },
    );
    assert!(
        out.contains("< () as :: idempotent_runtime :: __private :: ResponseType > :: replaying ("),
        "{out}"
    );
    assert!(
        out.contains("let __idempotent_store = :: idempotent_runtime :: __private :: IntoTxStore :: into_tx_store (& * pool) ;"),
        "{out}"
    );
    assert!(
        out.contains("let __idempotent_connection = :: idempotent_runtime :: __private :: connection_of (& __idempotent_store) ; let __idempotent_store = < _ as :: idempotent_runtime :: __private :: TxParam < & mut PgConnection , _ >> :: tx_param (__idempotent_store , __idempotent_connection) ;"),
        "{out}"
    );
    assert!(
        out.contains("__private :: DedupTableInTx { store : __idempotent_store ,"),
        "{out}"
    );
    assert!(
        out.contains(
            "-> Result < () , AppError > { let tx : & mut PgConnection = __idempotent_tx ;"
        ),
        "{out}"
    );
    assert!(
        out.contains("async fn place (pool : & PgPool , req : & PlaceOrder) ->"),
        "{out}"
    );
    assert!(!out.contains("# [tx]"), "{out}");
    assert!(
        !out.contains("\"tx\""),
        "the transaction is not fingerprinted: {out}"
    );
}

#[test]
fn dedup_table_options_scope_name_and_crate() {
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = ["ctx.user", "req.id"],
            scope = "ctx.tenant_id",
            name = "orders.place",
            lease = "30s",
            ttl = "24h",
            on_busy = "wait(1.5s)",
            crate = "::my_rt",
            fingerprint = ["req", "req.amount"],
        ),
        quote! {
            async fn place(ctx: &Ctx, store: Arc<Store>, req: PlaceOrder) -> Result<u64, AppError> { Ok(1) }
        },
    );
    assert!(out.contains(":: my_rt :: __private :: KeyBuilder :: new (\"orders.place\")"));
    assert!(out.contains(
        ":: my_rt :: __private :: KeyPartArg :: add_part (& (req . id) , :: my_rt :: __private :: KeyPartArg :: add_part (& (ctx . user) , :: my_rt :: __private :: KeyPartArg :: add_scope (& (ctx . tenant_id) , :: my_rt :: __private :: KeyBuilder :: new (\"orders.place\")))) . finish ()"
    ));
    assert!(out.contains(
        "Serialize :: __idempotent_arg (& (req) , __idempotent_fingerprinter , \"req\")"
    ));
    assert!(out.contains(
        "Serialize :: __idempotent_arg (& (req . amount) , __idempotent_fingerprinter , \"req.amount\")"
    ));
    assert!(out.contains("lease : :: my_rt :: __private :: Duration :: from_millis (30000)"));
    assert!(out.contains("ttl : :: my_rt :: __private :: Duration :: from_millis (86400000)"));
    assert!(out.contains("on_busy : :: my_rt :: __private :: OnBusy :: Wait (:: my_rt :: __private :: Duration :: from_millis (1500))"));
    assert!(out.contains(".. :: core :: default :: Default :: default ()"));
    assert!(
        out.contains("& (store)"),
        "an owned store is borrowed: {out}"
    );
    assert!(!out.contains("idempotent_runtime"), "{out}");
}

#[test]
fn dedup_table_in_a_method() {
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = "self.shard",
            store = "self.db",
            on_busy = "reject",
            fingerprint = false
        ),
        quote! {
            async fn place(&self, req: PlaceOrder) -> anyhow::Result<Vec<u8>> { todo!() }
        },
    );
    assert!(out.contains("& (self . db)"), "{out}");
    assert!(
        out.contains("Fingerprinter :: disabled () . finish ()"),
        "{out}"
    );
    assert!(out.contains("on_busy : :: idempotent_runtime :: __private :: OnBusy :: Reject ,"));
    assert!(
        out.contains(
            "< Vec < u8 > as :: idempotent_runtime :: __private :: ResponseType > :: replaying"
        ),
        "{out}"
    );
}

/// The operation's site and its name check come first, before the key, the fingerprint and
/// any store access.
const SITE: &str = "static __IDEMPOTENT_OPERATION : :: idempotent_runtime :: __private :: OperationSite = :: idempotent_runtime :: __private :: OperationSite :: new (";
/// Its registration.
const SUBMIT: &str = ":: idempotent_runtime :: __private :: inventory :: submit ! (:: idempotent_runtime :: __private :: Registered (& __IDEMPOTENT_OPERATION)) ;";
/// Its check.
const CHECK: &str = "match :: idempotent_runtime :: __private :: OperationSite :: check (& __IDEMPOTENT_OPERATION) {";
/// The location macros, at the function's name.
const LOCATION: &str = ":: core :: file ! () , :: core :: line ! () , :: core :: column ! ())";

#[test]
fn default_name_of_a_free_fn_is_module_path_and_fn() {
    let out = ok(quote!(strategy = "dedup_table", key = "req.id"), place());
    let name = ":: core :: concat ! (:: core :: module_path ! () , \"::\" , \"place\")";
    assert!(
        out.contains(&format!("{SITE}{name} , \"place\" , {LOCATION} ;")),
        "{out}"
    );
    let site = out.find(SITE).expect("the site");
    let submit = out.find(SUBMIT).expect("the registration");
    let check = out.find(CHECK).expect("the check");
    let key = out.find("KeyBuilder :: new").expect("the key");
    assert!(site < submit && submit < check && check < key, "{out}");
    assert!(
        out.contains(&format!("KeyBuilder :: new ({name})")),
        "the key uses the same name: {out}"
    );
}

/// Methods, trait-impl methods and methods of generic types: the same constant as a free
/// fn; nothing from `Self` (`type_name` is unstable across compiler versions).
#[test]
fn default_name_of_a_method_is_module_path_and_fn() {
    for item in [
        quote! { async fn handle(&self, id: &str) -> Result<u8, E> { Ok(1) } },
        quote! { async fn handle(self: Arc<Self>, id: String) -> Result<u8, E> { Ok(1) } },
        quote! { async fn handle<T: Clone>(&mut self, id: T) -> Result<u8, E> { Ok(1) } },
    ] {
        let out = ok(
            quote!(strategy = "dedup_table", key = "id", store = "self.store"),
            item,
        );
        assert!(
            out.contains(&format!(
                "{SITE}:: core :: concat ! (:: core :: module_path ! () , \"::\" , \"handle\") , \"handle\" , {LOCATION} ;"
            )),
            "{out}"
        );
        let body = &out[out.find(SITE).expect("the site")..];
        assert!(!body.contains("type_name"), "{out}");
        assert!(!body.contains("< Self >"), "{out}");
        assert!(!body.contains("format !"), "{out}");
    }
}

/// `name = "..."` is the site's name and the key's; a raw identifier's name has no `r#`.
#[test]
fn explicit_name_and_raw_identifier() {
    let out = ok(
        quote!(
            strategy = "token",
            key = "t",
            store = "s",
            name = "orders.pay"
        ),
        quote! { async fn r#type(s: &S, t: &str) -> Result<u8, E> { Ok(1) } },
    );
    assert!(
        out.contains(&format!("{SITE}\"orders.pay\" , \"type\" , {LOCATION} ;")),
        "{out}"
    );
    assert!(out.contains("KeyBuilder :: new (\"orders.pay\")"), "{out}");
    let out = ok(
        quote!(strategy = "distributed_lock", key = "t", store = "s"),
        quote! { async fn r#type(s: &S, t: &str) -> Result<u8, E> { Ok(1) } },
    );
    assert!(
        out.contains("concat ! (:: core :: module_path ! () , \"::\" , \"type\") , \"type\" ,"),
        "{out}"
    );
}

/// The business-table strategies store no record under an operation name: nothing to
/// register.
#[test]
fn business_strategies_register_no_operation() {
    let out = ok(
        quote!(strategy = "unique_index", key = "req.id", table = "orders"),
        quote! {
            async fn place(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), E> { insert(tx).await }
        },
    );
    assert!(!out.contains("OperationSite"), "{out}");
    assert!(!out.contains("inventory"), "{out}");
}

#[test]
fn dedup_table_default_fingerprint_skips_self_store_and_tx() {
    let out = ok(
        quote!(strategy = "dedup_table", key = "order.code", store = "conn"),
        quote! {
            async fn place(&self, conn: &mut SqliteConnection, order: Order, (a, b): (u8, u8)) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(out.contains("& mut * conn"), "{out}");
    for arg in ["order", "a", "b"] {
        assert!(
            out.contains(&format!(
                "Serialize :: __idempotent_arg (& ({arg}) , __idempotent_fingerprinter , \"{arg}\")"
            )),
            "{out}"
        );
    }
    assert_eq!(out.matches("trait Serialize").count(), 3, "{out}");
    assert!(!out.contains("\"conn\""));
}

#[test]
fn a_method_names_its_store() {
    // The macro cannot see the struct's fields: no `self.db` default.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(&self, req: PlaceOrder) -> Result<(), E> { Ok(()) }
        },
    );
    assert_eq!(
        msg,
        "`store` is missing: a method names its store field, e.g. store = \"self.db\" (the field holding the pool or store); the macro cannot see the struct's fields"
    );
    // A parameter named like a store is still the default.
    let out = ok(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(&self, store: &MemoryStore, req: PlaceOrder) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(out.contains("claim_store (& * store)"), "{out}");
}

#[test]
fn fingerprint_checks_name_the_argument() {
    // Default fingerprint: the message names the parameter, the note the list without it.
    let out = ok(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(store: &MemoryStore, pool: &PgPool, req: &Req) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(out.contains("# [diagnostic :: on_unimplemented (message = \"parameter `pool` is part of the request fingerprint, but its type `{Self}` is not `Serialize`\""), "{out}");
    assert!(out.contains("to leave `pool` out, list the arguments that identify the request: `fingerprint = [\\\"req\\\"]`"), "{out}");
    assert!(
        out.contains("# [diagnostic :: do_not_recommend] impl"),
        "{out}"
    );
    // The only argument: `fingerprint = false`.
    let out = ok(
        quote!(strategy = "dedup_table", key = "pool.id"),
        quote! {
            async fn place(store: &MemoryStore, pool: &Pool) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        out.contains(
            "to leave `pool` out, write `fingerprint = false` (no other argument is fingerprinted)"
        ),
        "{out}"
    );
    // A listed entry: the message says it is listed; the note, the list without it.
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            fingerprint = ["req.amount", "note"]
        ),
        quote! {
            async fn place(store: &MemoryStore, req: &Req, note: Note) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(out.contains("message = \"`note` is listed in `fingerprint`, but its type `{Self}` is not `Serialize`\""), "{out}");
    assert!(
        out.contains("remove it from the list: `fingerprint = [\\\"req.amount\\\"]`"),
        "{out}"
    );
    // `fingerprint = false`: no check at all.
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            fingerprint = false
        ),
        quote! {
            async fn place(store: &MemoryStore, req: &Req, note: Note) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(!out.contains("on_unimplemented"), "{out}");
}

#[test]
fn key_parts_carry_their_literal_spans() {
    // In unit tests spans are the fallback kind; at least check that the
    // expression is re-parsed from the string and not pasted as a literal.
    let out = ok(
        quote!(strategy = "dedup_table", key = "req.items[0].sku()"),
        place(),
    );
    assert!(
        out.contains("KeyPartArg :: add_part (& (req . items [0] . sku ()) ,"),
        "{out}"
    );
}

#[test]
fn unknown_strategy() {
    let msg = one_err(quote!(strategy = "dedup", key = "req.id"), place());
    assert_eq!(
        msg,
        "unknown strategy `dedup`; valid strategies are: select_before_insert, pessimistic, optimistic, unique_index, dedup_table, state_machine, distributed_lock, token"
    );
    let msg = one_err(quote!(strategy = "dedup_tabel", key = "req.id"), place());
    assert!(
        msg.starts_with("unknown strategy `dedup_tabel` (did you mean `dedup_table`?)"),
        "{msg}"
    );
}

#[test]
fn missing_strategy_and_key() {
    let errors = errs(quote!(), place());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("missing `strategy`"), "{errors:#?}");
    assert!(
        errors[1].starts_with("missing `key`: add key = \"...\""),
        "{errors:#?}"
    );
}

#[test]
fn unknown_and_duplicate_options() {
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            ttl = "1h",
            ttl = "2h",
            leese = "1s"
        ),
        place(),
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        errors[0],
        "duplicate option `ttl`: it is already given above; write it once"
    );
    assert!(
        errors[1].starts_with("unknown option `leese` (did you mean `lease`?); valid options are: strategy, key, store,"),
        "{errors:#?}"
    );
}

#[test]
fn malformed_values() {
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = req.id,
            lease = 30,
            fingerprint = [req],
            name
        ),
        place(),
    );
    assert_eq!(
        errors,
        vec![
            "option values are string literals: write `key = \"req.id\"`".to_owned(),
            "option values are string literals: write `lease = \"30s\"`".to_owned(),
            "expected a string literal such as \"order.code\"".to_owned(),
            "option `name` needs a value: write `name = \"...\"`".to_owned(),
        ],
        "a malformed key must not also be reported missing"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", ttl = true),
        place(),
    );
    assert_eq!(msg, "option `ttl` takes a string, e.g. ttl = \"24h\"");
}

#[test]
fn option_not_used_by_strategy() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", table = "orders"),
        place(),
    );
    assert_eq!(
        msg,
        "option `table` is not used by strategy `dedup_table`; it applies to: select_before_insert, pessimistic, optimistic, unique_index, state_machine"
    );
}

#[test]
fn roots_must_be_parameters() {
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = ["order.code", "self.x"],
            scope = "CTX",
            store = "pool.inner"
        ),
        place(),
    );
    assert_eq!(
        errors,
        vec![
            "`order` is not a parameter of this function; write a path rooted at one of: pool, req"
                .to_owned(),
            "`self` is not a parameter of this function; write a path rooted at one of: pool, req"
                .to_owned(),
            "`CTX` is not a parameter of this function; write a path rooted at one of: pool, req"
                .to_owned(),
        ]
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "format!(\"{}\", req.id)"),
        place(),
    );
    assert!(
        msg.starts_with("`format!(\"{}\", req.id)` is not a path rooted at a parameter"),
        "{msg}"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "tx.id"),
        quote!(
            async fn place(pool: &PgPool, #[tx] tx: &mut PgConnection) -> Result<(), E> {
                write(tx).await
            }
        ),
    );
    assert_eq!(
        msg,
        "`tx` is supplied by the wrapper (`#[tx]`) and cannot be used in `key`; write a path rooted at one of: pool"
    );
}

#[test]
fn durations() {
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            lease = "30 parsecs",
            ttl = "0s",
            on_busy = "wait(soon)"
        ),
        place(),
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with("`30 parsecs` is not a duration: unknown time unit \"parsecs\""),
        "{errors:#?}"
    );
    assert!(errors[0].ends_with("; write e.g. \"30s\" or \"500ms\""));
    assert_eq!(
        errors[1],
        "a zero `ttl` would forget the record at once; write e.g. \"24h\""
    );
    assert!(
        errors[2].starts_with("`soon` is not a duration"),
        "{errors:#?}"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", on_busy = "block"),
        place(),
    );
    assert_eq!(
        msg,
        "`block` is not an on_busy policy; write on_busy = \"reject\" or on_busy = \"wait(5s)\""
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", lease = "0"),
        place(),
    );
    assert_eq!(
        msg,
        "a zero `lease` would expire at once; write e.g. \"30s\""
    );
}

#[test]
fn duration_floors() {
    // At the floors: accepted.
    ok(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            lease = "300ms",
            ttl = "300ms",
            on_busy = "wait(10ms)"
        ),
        place(),
    );
    ok(
        quote!(strategy = "dedup_table", key = "req.id", ttl = "30s"),
        place(),
    );
    ok(
        quote!(strategy = "dedup_table", key = "req.id", lease = "24h"),
        place(),
    );
    // Just below: one error each, at the literal, with the minimum and why.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", lease = "299ms"),
        place(),
    );
    assert_eq!(
        msg,
        "`lease = \"299ms\"` is too short: the claim is renewed every lease/3 by one round trip to the store, and a renewal that fails must leave time for the next one before the lease ends; use at least \"300ms\""
    );
    let msg = one_err(
        quote!(
            strategy = "token",
            key = "req.id",
            lease = "1ms",
            ttl = "1h"
        ),
        place(),
    );
    assert!(msg.starts_with("`lease = \"1ms\"` is too short"), "{msg}");
    let msg = one_err(
        quote!(
            strategy = "distributed_lock",
            key = "req.id",
            lease = "2s",
            ttl = "1s 999ms"
        ),
        place(),
    );
    assert_eq!(
        msg,
        "`ttl = \"1s 999ms\"` is shorter than the lease (2s): the completed record must outlive the claim it replaces, or a retry that waited out the claim finds no record and runs the body again; use a ttl of at least \"2s\""
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", ttl = "29s"),
        place(),
    );
    assert!(
        msg.starts_with("`ttl = \"29s\"` is shorter than the default lease (30s):")
            && msg.ends_with("use a ttl of at least \"30s\", or set a shorter lease"),
        "{msg}"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", lease = "25h"),
        place(),
    );
    assert!(
        msg.starts_with("`lease = \"25h\"` is longer than the default ttl (24h):")
            && msg.ends_with("add a ttl at least as long as the lease, e.g. `ttl = \"25h\"`"),
        "{msg}"
    );
    let msg = one_err(
        quote!(
            strategy = "distributed_lock",
            key = "req.id",
            on_busy = "wait(9ms)"
        ),
        place(),
    );
    assert_eq!(
        msg,
        "`on_busy = \"wait(9ms)\"` is too short: a waiting duplicate looks again only after a 5 ms pause and a round trip to the store, so it would give up before its second look; use at least `wait(10ms)`, or `on_busy = \"reject\"`"
    );
    // The same floors with `#[tx]`: the options are the same, and so is the runtime's check.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", lease = "100ms"),
        quote!(
            async fn place(pool: &PgPool, req: &R, #[tx] tx: &mut PgConnection) -> Result<(), E> {
                write(tx).await
            }
        ),
    );
    assert!(msg.starts_with("`lease = \"100ms\"` is too short"), "{msg}");
    // Both problems of one attribute are reported, each at its own literal.
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            lease = "100ms",
            ttl = "50ms"
        ),
        place(),
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn sql_identifiers() {
    let errors = errs(
        quote!(
            strategy = "optimistic",
            key = "req.id",
            table = "orders; drop table x",
            column = "1code"
        ),
        place(),
    );
    // `place` has no `#[tx]`: reported together with the identifiers.
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with("strategy `optimistic` runs the body inside its own transaction"),
        "{errors:#?}"
    );
    let errors = &errors[1..];
    assert!(
        errors[0].starts_with(
            "`orders; drop table x` is not a plain SQL identifier; `table` takes letters"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("`1code` is not a plain SQL identifier; `column` takes"),
        "{errors:#?}"
    );
}

#[test]
fn function_shape() {
    let errors = errs(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            fn place(pool: &PgPool, req: PlaceOrder) -> Option<u8> {
                None
            }
        ),
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        errors[0],
        "`#[idempotent]` needs an `async fn`; write `async fn place`"
    );
    assert!(
        errors[1].starts_with("the return type must be written `Result<T, E>`"),
        "{errors:#?}"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            async fn place(pool: &PgPool, req: PlaceOrder) {}
        ),
    );
    assert!(
        msg.starts_with("`#[idempotent]` needs a function returning `Result<T, E>`"),
        "{msg}"
    );
}

#[test]
fn injected_parameters() {
    let item = quote! {
        async fn place(pool: &PgPool, req: u8, #[tx] tx: &mut PgConnection, #[tx] tx2: &mut PgConnection, #[fence] fence: FencingToken) -> Result<(), E> { write(tx).await }
    };
    let (text, errors) = run(quote!(strategy = "dedup_table", key = "req"), item);
    assert_eq!(
        errors,
        vec![
            "`#[tx]` may appear only once: one parameter receives the transaction".to_owned(),
            "`#[fence]` needs a lock-based strategy (distributed_lock); strategy `dedup_table` issues no fencing token".to_owned(),
        ]
    );
    assert!(
        !text.contains("# [tx]") && !text.contains("# [fence]"),
        "{text}"
    );
    assert!(
        text.contains("# [allow (unused_variables , unused_mut , unreachable_code)] async fn place (pool : & PgPool , req : u8) -> Result < () , E > { let tx : & mut PgConnection = :: core :: unreachable ! () ; let tx2 : & mut PgConnection = :: core :: unreachable ! () ; let fence : FencingToken = :: core :: unreachable ! () ; write (tx) . await }"),
        "injected parameters leave the signature as in the wrapper: {text}"
    );

    let msg = one_err(
        quote!(strategy = "token", key = "req.id"),
        quote!(
            async fn place(pool: &PgPool, req: R, #[tx] tx: &mut PgConnection) -> Result<(), E> {
                write(tx).await
            }
        ),
    );
    assert_eq!(
        msg,
        "`#[tx]` needs a SQL strategy (select_before_insert, pessimistic, optimistic, unique_index, dedup_table, state_machine); strategy `token` has no transaction to inject"
    );
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            async fn place(pool: &PgPool, req: R, #[tx] (a, b): (u8, u8)) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    assert_eq!(
        msg,
        "a `#[tx]` parameter must be a plain `name: Type`, e.g. `#[tx] tx: &mut PgConnection`"
    );
}

#[test]
fn store_must_resolve() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            async fn place(backend: &PgPool, req: R) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    assert_eq!(
        msg,
        "`store` is missing: add store = \"backend\", the parameter whose type is a pool or store (only a parameter named `db`, `pool` or `store` is the store without it)"
    );
    // No parameter of a store's type: the shape, not a name that is not there.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            async fn place(backend: &Backend, req: R) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    assert!(
        msg.starts_with("`store` is missing: add store = \"...\", an expression rooted at a parameter that gives the backend"),
        "{msg}"
    );
    assert!(!msg.contains("\"pool\""), "{msg}");
    // Behind an `Arc`, and a `RedisStore`, are stores too.
    for ty in [
        quote!(Arc<MemoryStore>),
        quote!(&idempotent_runtime::RedisStore),
    ] {
        let msg = one_err(
            quote!(strategy = "token", key = "req.id"),
            quote!(
                async fn place(cache: #ty, req: R) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert!(
            msg.starts_with("`store` is missing: add store = \"cache\""),
            "{msg}"
        );
    }
}

#[test]
fn a_method_without_store_is_shown_the_field_its_body_uses() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(&self, req: R) -> Result<(), E> {
                let n = self.count;
                insert(&self.read_pool, &req, n).await
            }
        },
    );
    assert_eq!(
        msg,
        "`store` is missing: add store = \"self.read_pool\" if that field holds the pool or store (a method names its store field: the macro cannot see the struct's fields)"
    );
}

#[test]
fn missing_key_suggests_a_request_argument_not_the_store() {
    let key_hint = |item: TokenStream| {
        let errors = errs(quote!(strategy = "dedup_table"), item);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap_or_default()
    };
    // The pool comes first, the request second: the request's field.
    let msg = key_hint(quote! {
        async fn place(pool: &PgPool, req: &PlaceOrder) -> Result<(), E> { Ok(()) }
    });
    assert_eq!(
        msg,
        "missing `key`: add key = \"...\", a path rooted at a parameter that identifies the request (e.g. key = \"req.request_id\", the field of `req` that carries the request's id)"
    );
    // A store of another name (by its type) and a `#[tx]` connection are not the key either;
    // a parameter named like an id is the key itself, before a struct.
    let errors = errs(
        quote!(strategy = "dedup_table"),
        quote! {
            async fn place(backend: &MemoryStore, order: Order, request_id: Uuid) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        errors[0].contains("(e.g. key = \"request_id\")"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("add store = \"backend\""), "{errors:#?}");
    let msg = key_hint(quote! {
        async fn place(db: &SqlitePool, #[tx] tx: &mut SqliteConnection, idempotency_key: &str) -> Result<(), E> {
            write(&mut *tx).await
        }
    });
    assert!(msg.contains("(e.g. key = \"idempotency_key\")"), "{msg}");
    // `store = "..."` names the store: its root is never suggested, whatever its type.
    let errors = errs(
        quote!(strategy = "dedup_table", store = "backend.pool"),
        quote! {
            async fn place(backend: &Backend, amount: u64) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(errors[0].contains("(e.g. key = \"amount\")"), "{errors:#?}");
    // Only the store: the shape, and that a parameter is missing.
    let msg = key_hint(quote! {
        async fn place(pool: &PgPool) -> Result<(), E> { Ok(()) }
    });
    assert!(
        msg.contains(
            "(e.g. key = \"req.request_id\"; no parameter here but the store can carry it"
        ),
        "{msg}"
    );
}

#[test]
fn tx_on_a_store_without_transactions() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(store: &MemoryStore, req: R, #[tx] tx: &mut SqliteConnection) -> Result<(), E> {
                write(&mut *tx).await
            }
        },
    );
    assert!(
        msg.starts_with("the store `store` is a `MemoryStore`, which has no transactions: with `#[tx]`, strategy `dedup_table` runs the body in a transaction the store opens"),
        "{msg}"
    );
    assert!(
        msg.contains("or remove `#[tx]` to claim in the `MemoryStore` outside the body"),
        "{msg}"
    );
    assert!(!msg.contains("0."), "no version in the message: {msg}");
    let msg = one_err(
        quote!(
            strategy = "pessimistic",
            key = "req.id",
            table = "orders",
            store = "cache"
        ),
        quote! {
            async fn place(cache: Arc<RedisStore>, req: R, #[tx] tx: &mut PgConnection) -> Result<(), E> {
                write(&mut *tx).await
            }
        },
    );
    assert!(
        msg.starts_with("the store `cache` is a `RedisStore`, which has no transactions"),
        "{msg}"
    );
    assert!(
        msg.contains("strategy `pessimistic` works on a SQL business table"),
        "{msg}"
    );
}

#[test]
fn business_strategies_need_tx() {
    let msg = one_err(
        quote!(
            strategy = "optimistic",
            key = "order.code",
            table = "orders"
        ),
        quote!(
            async fn place(db: &PgPool, order: &OrderRef, amount: i64) -> Result<(), E> {
                Ok(())
            }
        ),
    );
    assert!(
        msg.starts_with("strategy `optimistic` runs the body inside its own transaction"),
        "{msg}"
    );
}

#[test]
fn optimistic_expands_to_its_entry_point() {
    let out = ok(
        quote!(
            strategy = "optimistic",
            key = "order.code",
            table = "orders"
        ),
        quote!(
            async fn add(
                db: &PgPool,
                order: &OrderRef,
                amount: i64,
                #[tx] tx: &mut PgConnection,
            ) -> Result<(), E> {
                write(tx).await
            }
        ),
    );
    assert!(
        out.contains(":: idempotent_runtime :: __private :: business ("),
        "{out}"
    );
    assert!(
        out.contains("strategy : :: idempotent_runtime :: __private :: Optimistic { target :"),
        "{out}"
    );
    assert!(
        out.contains("on_duplicate : :: idempotent_runtime :: __private :: no_handler () ,"),
        "{out}"
    );
    assert!(out.contains("SqlIdent :: new (\"orders\")"), "{out}");
    assert!(out.contains("SqlIdent :: new (\"code\")"), "{out}");
    assert!(out.contains("& (order . version)"), "{out}");
    assert!(
        out.contains("async fn add (db : & PgPool , order : & OrderRef , amount : i64)"),
        "{out}"
    );
}

#[test]
fn strategy_requirements_are_checked_before_not_implemented() {
    let errors = errs(
        quote!(
            strategy = "state_machine",
            key = "req.id",
            from = "PAID",
            to = "PAID"
        ),
        place(),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("strategy `state_machine` needs `table` and `status_column`: add table = \"...\", status_column = \"...\"")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("`from` and `to` are both \"PAID\"")),
        "{errors:#?}"
    );
    assert!(
        !errors.iter().any(|e| e.contains("not implemented")),
        "{errors:#?}"
    );
}

#[test]
fn all_errors_are_reported_together() {
    let errors = errs(
        quote!(
            strategy = "dedup_table",
            key = "nope",
            lease = "forever",
            table = "t",
            bogus = "x"
        ),
        quote!(
            fn place(pool: &PgPool) -> u8 {
                0
            }
        ),
    );
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn not_a_function() {
    let (text, errors) = run(
        quote!(strategy = "dedup_table", key = "x"),
        quote!(
            struct Place;
        ),
    );
    assert!(text.starts_with("struct Place ;"), "{text}");
    assert_eq!(
        errors,
        vec!["`#[idempotent]` goes on an `async fn` with a body (a free function or a method in an `impl` block)".to_owned()]
    );
    let (_, errors) = run(
        quote!(strategy = "dedup_table", key = "x"),
        quote!(
            async fn place(&self, x: u8) -> Result<(), E>;
        ),
    );
    assert!(
        errors[0].starts_with("`#[idempotent]` needs the function's body"),
        "{errors:#?}"
    );
}

#[test]
fn inner_attributes_stay_inside_the_body() {
    let out = ok(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            #[doc = "Places an order."]
            async fn place(pool: &PgPool, req: R) -> Result<(), E> {
                #![allow(unused)]
                Ok(())
            }
        },
    );
    assert!(
        out.starts_with("# [doc = \"Places an order.\"] async fn place"),
        "{out}"
    );
    assert!(
        out.contains("{ # ! [allow (unused)] static __IDEMPOTENT_OPERATION"),
        "{out}"
    );
}

#[test]
fn return_type_with_impl_trait_is_refused() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            async fn place(pool: &PgPool, req: PlaceOrder) -> Result<impl Serialize, AppError> {
                Ok(1)
            }
        ),
    );
    assert!(
        msg.starts_with("the return type cannot contain `impl Trait`"),
        "{msg}"
    );
}

#[test]
fn applying_the_attribute_twice_is_refused() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote!(
            #[idempotent(strategy = "dedup_table", key = "req.id")]
            async fn place(pool: &PgPool, req: PlaceOrder) -> Result<Receipt, AppError> {
                todo!()
            }
        ),
    );
    assert!(msg.starts_with("`#[idempotent]` is applied twice"), "{msg}");
}

#[test]
fn business_key_of_five_parts_is_refused() {
    let msg = one_err(
        quote!(
            strategy = "unique_index",
            key = ["r.a", "r.b", "r.c", "r.d", "r.e"],
            table = "t"
        ),
        quote!(
            async fn place(
                pool: &PgPool,
                r: &R,
                #[tx] tx: &mut PgConnection,
            ) -> Result<(), AppError> {
                write(tx).await
            }
        ),
    );
    assert_eq!(
        msg,
        "strategy `unique_index` compares at most 4 key parts with their columns; this is part 5"
    );
}

#[test]
fn strategy_shape_errors_are_reported_with_the_others() {
    // Each of these was once raised only after validation succeeded.
    let errors = errs(
        quote!(
            strategy = "unique_index",
            key = ["r.a", "r.b"],
            column = "a",
            lease = "1s"
        ),
        quote! {
            async fn place(pool: &PgPool, r: &R) -> Result<(), E> { Ok(()) }
        },
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("option `lease` is not used by strategy `unique_index`"));
    assert!(errors[1].starts_with("strategy `unique_index` runs the body inside its own"));
    assert!(errors[2].starts_with("strategy `unique_index` needs `constraint`"));

    let errors = errs(
        quote!(
            strategy = "select_before_insert",
            key = ["r.a", "r.b"],
            table = "t",
            column = "a",
            on_duplicate = "again"
        ),
        quote! {
            async fn place(pool: &PgPool, r: &R, (x, y): (u8, u8), #[tx] tx: &mut PgConnection) -> Result<(), E> { write(tx).await }
        },
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("`column` names one column but the key has 2 parts"));
    assert!(errors[1].starts_with("`on_duplicate` passes every argument on by name"));

    let msg = one_err(
        quote!(
            strategy = "pessimistic",
            key = ["r.a", "r.b()"],
            table = "t"
        ),
        quote! {
            async fn place(pool: &PgPool, r: &R, #[tx] tx: &mut PgConnection) -> Result<(), E> { write(tx).await }
        },
    );
    assert!(
        msg.starts_with("key part `r.b()` does not end in a field name to use as its column"),
        "{msg}"
    );

    let msg = one_err(
        quote!(strategy = "token", key = ["r.a", "r.b"]),
        quote! {
            async fn place(store: &MemoryStore, r: &R) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.starts_with("strategy `token` takes one key part, the token"),
        "{msg}"
    );
}

#[test]
fn a_malformed_tx_is_not_also_reported_missing() {
    let msg = one_err(
        quote!(strategy = "pessimistic", key = "r.a", table = "t"),
        quote! {
            async fn place(pool: &PgPool, r: &R, #[tx] (a, b): (u8, u8)) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.starts_with("a `#[tx]` parameter must be a plain"),
        "{msg}"
    );
}

#[test]
fn on_cancel_in_claim_mode_lock_and_token() {
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            on_cancel = "release"
        ),
        place(),
    );
    assert!(
        out.contains("on_cancel : :: idempotent_runtime :: __private :: OnCancel :: Release ,"),
        "{out}"
    );
    let out = ok(
        quote!(
            strategy = "distributed_lock",
            key = "req.id",
            store = "pool",
            on_cancel = "keep"
        ),
        place(),
    );
    assert!(
        out.contains("on_cancel : :: idempotent_runtime :: __private :: OnCancel :: Keep ,"),
        "{out}"
    );
    let out = ok(
        quote!(
            strategy = "token",
            key = "req.id",
            store = "pool",
            on_cancel = " release "
        ),
        place(),
    );
    assert!(out.contains("OnCancel :: Release"), "{out}");
    // Not written: the runtime's default (keep) applies.
    let out = ok(quote!(strategy = "dedup_table", key = "req.id"), place());
    assert!(!out.contains("on_cancel"), "{out}");
}

#[test]
fn on_cancel_bad_value_lists_the_valid_ones() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", on_cancel = "drop"),
        place(),
    );
    assert!(
        msg.starts_with(
            "`drop` is not an on_cancel policy; write on_cancel = \"keep\" (a future dropped mid-body keeps its claim until the lease ends, the default) or on_cancel = \"release\""
        ),
        "{msg}"
    );
    let msg = one_err(
        quote!(strategy = "token", key = "req.id", on_cancel = true),
        place(),
    );
    assert_eq!(
        msg,
        "option `on_cancel` takes a string, e.g. on_cancel = \"release\""
    );
}

#[test]
fn on_cancel_with_tx_is_an_error() {
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id", on_cancel = "keep"),
        quote! {
            async fn place(pool: &PgPool, req: &PlaceOrder, #[tx] tx: &mut PgConnection) -> Result<(), AppError> { write(tx).await }
        },
    );
    assert!(
        msg.starts_with("`on_cancel` does not apply with `#[tx]`: a future dropped mid-body rolls its transaction back"),
        "{msg}"
    );
}

#[test]
fn on_cancel_on_a_business_strategy_is_an_error() {
    let msg = one_err(
        quote!(
            strategy = "optimistic",
            key = "req.id",
            table = "orders",
            on_cancel = "keep"
        ),
        quote! {
            async fn place(pool: &PgPool, req: &PlaceOrder, #[tx] tx: &mut PgConnection) -> Result<(), AppError> { write(tx).await }
        },
    );
    assert_eq!(
        msg,
        "option `on_cancel` is not used by strategy `optimistic`; it applies to: dedup_table, distributed_lock, token"
    );
}

#[test]
fn connection_parameter_without_tx_is_pointed_at_with_the_stores_connection() {
    let msg = one_err(
        quote!(
            strategy = "select_before_insert",
            key = "req.id",
            table = "orders"
        ),
        quote! {
            async fn place(pool: &SqlitePool, req: &Req, conn: &mut sqlx::SqliteConnection) -> Result<(), E> { Ok(()) }
        },
    );
    assert_eq!(
        msg,
        "add `#[tx]` to `conn`: strategy `select_before_insert` runs the body inside its own transaction and lends it to the parameter marked `#[tx]`; write `#[tx] conn: &mut SqliteConnection` and write through it"
    );
    // A transaction parameter: the connection comes from its database when the store's type
    // does not name one.
    let msg = one_err(
        quote!(
            strategy = "pessimistic",
            key = "req.id",
            table = "orders",
            store = "self.db"
        ),
        quote! {
            async fn place(&self, req: &Req, tx: &mut Transaction<'_, MySql>) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.starts_with("add `#[tx]` to `tx`:") && msg.contains("`#[tx] tx: &mut MySqlConnection`"),
        "{msg}"
    );
}

#[test]
fn state_machine_done_states() {
    let item = quote!(
        async fn place(db: &PgPool, o: &Order, #[tx] tx: &mut PgConnection) -> Result<(), E> {
            ship(tx).await
        }
    );
    let attr = |done: TokenStream| {
        quote!(
            strategy = "state_machine",
            key = "o.code",
            table = "orders",
            status_column = "status",
            from = "PAID",
            to = "SHIPPED",
            #done
        )
    };
    let out = ok(attr(quote!(done = ["SHIPPED", "DELIVERED"])), item.clone());
    assert!(
        out.contains("to : \"SHIPPED\" , done : & [\"SHIPPED\" , \"DELIVERED\"] ,"),
        "{out}"
    );
    let out = ok(attr(quote!()), item.clone());
    assert!(out.contains("done : & [] ,"), "{out}");
    let out = ok(attr(quote!(done = "DELIVERED")), item.clone());
    assert!(out.contains("done : & [\"DELIVERED\"] ,"), "{out}");
    let first = |errors: Vec<String>| errors.into_iter().next().unwrap_or_default();
    let msg = first(errs(attr(quote!(done = [])), item.clone()));
    assert!(msg.starts_with("`done` lists no states"), "{msg}");
    let msg = first(errs(attr(quote!(done = true)), item.clone()));
    assert!(
        msg.starts_with("option `done` takes a list of states"),
        "{msg}"
    );
    let msg = first(errs(attr(quote!(done = ["PAID"])), item.clone()));
    assert!(msg.starts_with("\"PAID\" is the `from` state"), "{msg}");
    let msg = first(errs(attr(quote!(done = ["X", "X"])), item.clone()));
    assert!(msg.starts_with("\"X\" is listed twice in `done`"), "{msg}");
    let msg = first(errs(attr(quote!(done = [" "])), item.clone()));
    assert!(msg.starts_with("a state in `done` is empty"), "{msg}");
    let msg = one_err(
        quote!(
            strategy = "pessimistic",
            key = "o.code",
            table = "orders",
            done = ["X"]
        ),
        item,
    );
    assert!(
        msg.starts_with(
            "option `done` is not used by strategy `pessimistic`; it applies to: state_machine"
        ),
        "{msg}"
    );
}

#[test]
fn missing_tx_names_the_stores_connection_or_all_three() {
    let msg = one_err(
        quote!(strategy = "unique_index", key = "req.id", table = "orders"),
        quote! {
            async fn place(db: &sqlx::Pool<sqlx::Postgres>, req: &Req) -> Result<(), E> { Ok(()) }
        },
    );
    assert_eq!(
        msg,
        "strategy `unique_index` runs the body inside its own transaction: add a parameter `#[tx] tx: &mut PgConnection` and write through it"
    );
    let msg = one_err(
        quote!(strategy = "unique_index", key = "req.id", table = "orders"),
        quote! {
            async fn place(db: &Db, req: &Req) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.contains("`#[tx] tx: &mut PgConnection` (the connection of the store's database: `PgConnection`, `MySqlConnection` or `SqliteConnection`)"),
        "{msg}"
    );
}

#[test]
fn a_connection_that_is_the_store_is_not_taken_for_a_missing_tx() {
    let msg = one_err(
        quote!(
            strategy = "select_before_insert",
            key = "req.id",
            table = "orders",
            store = "conn"
        ),
        quote! {
            async fn place(conn: &mut PgConnection, req: &Req) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.starts_with("strategy `select_before_insert` runs the body"),
        "{msg}"
    );
    assert!(msg.contains("`#[tx] tx: &mut PgConnection`"), "{msg}");
}

#[test]
fn all_missing_options_are_one_error() {
    let msg = one_err(
        quote!(
            strategy = "state_machine",
            key = "req.id",
            table = "t",
            status_column = "s"
        ),
        quote! {
            async fn place(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), E> { ship(tx).await }
        },
    );
    assert_eq!(
        msg,
        "strategy `state_machine` needs `from` and `to`: add from = \"...\", to = \"...\" (e.g. status_column = \"status\", from = \"PAID\", to = \"SHIPPED\")"
    );
}

#[test]
fn respanned_expressions_keep_their_tokens_and_ranges() {
    // Which span each token gets (mixed site for field and method names) cannot be seen in
    // unit tests, where spans are the fallback kind: the ui cases `key_field_typo` and
    // `key_method_typo` and every pass case with a field path check it. Here: the tokens and
    // `..` (a range, not a field access) come through.
    let span = proc_macro2::Span::call_site();
    let tokens = crate::syntax::respan_expr(quote!(req.items[0].code.to_string(other.x)), span);
    assert_eq!(
        tokens.to_string(),
        "req . items [0] . code . to_string (other . x)"
    );
    let range = crate::syntax::respan_expr(quote!(req.a[1..n]), span).to_string();
    assert_eq!(range, "req . a [1 .. n]");
}

#[test]
fn a_tx_the_body_never_uses_is_an_error() {
    // Business-table: the body writes through the pool.
    let msg = one_err(
        quote!(strategy = "pessimistic", key = "req.id", table = "payments"),
        quote! {
            async fn place(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), E> {
                sqlx::query("UPDATE payments SET applied = TRUE").execute(pool).await?;
                Ok(())
            }
        },
    );
    assert!(
        msg.starts_with("the body never uses `tx`: strategy `pessimistic` runs the body in a transaction on `tx` that holds the key's row lock"),
        "{msg}"
    );
    assert!(
        msg.ends_with("run the body's queries on `tx`, e.g. `.execute(&mut *tx)`"),
        "{msg}"
    );
    // `_tx` only silences rustc's warning.
    let msg = one_err(
        quote!(strategy = "optimistic", key = "req.id", table = "t"),
        quote! {
            async fn place(pool: &PgPool, req: &Req, #[tx] _tx: &mut PgConnection) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(
        msg.starts_with("the body never uses `_tx` (the leading `_` only silences rustc's warning): strategy `optimistic`"),
        "{msg}"
    );
    // dedup_table with `#[tx]`: the other way out is claim mode.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(pool: &PgPool, req: &Req, #[tx] conn: &mut PgConnection) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(msg.contains("has inserted the idempotency record"), "{msg}");
    assert!(
        msg.ends_with("run the body's queries on `conn`, e.g. `.execute(&mut *conn)`, or remove `#[tx]` for claim mode, where the record is committed first and the body may use any connection"),
        "{msg}"
    );
    // A use anywhere counts: inside a macro invocation, a nested block, written `r#tx`.
    for body in [
        quote!({
            my_exec!(tx, "INSERT ...").await?;
            Ok(())
        }),
        quote!({
            if true {
                {
                    let c = &mut *tx;
                    run(c).await?;
                }
            }
            Ok(())
        }),
        quote!({ run(r#tx).await }),
    ] {
        ok(
            quote!(strategy = "unique_index", key = "req.id", table = "t"),
            quote! {
                async fn place(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), E> #body
            },
        );
    }
}

#[test]
fn connection_parameter_fingerprinted_by_a_replaying_strategy_is_pointed_at() {
    // dedup_table: `#[tx]` (transactional mode) or out of the fingerprint, listing the rest
    // (the pool is neither).
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "req.id"),
        quote! {
            async fn place(pool: &SqlitePool, req: &Req, tx: &mut SqliteConnection, n: u32) -> Result<R, E> { Ok(R) }
        },
    );
    assert_eq!(
        msg,
        "parameter `tx` is a database connection and cannot be fingerprinted (by default the request fingerprint takes every parameter but `self`, the store and `#[tx]`/`#[fence]`): mark it `#[tx] tx: &mut SqliteConnection` to run the body in the transaction that writes the idempotency record (transactional mode: the body's writes commit or roll back with the record), or leave it out with `fingerprint = [\"req\", \"n\"]`"
    );
    // Already a `#[tx]`: a second connection can only be left out; no other argument left.
    let msg = one_err(
        quote!(strategy = "dedup_table", key = "id", fingerprint = true),
        quote! {
            async fn place(pool: &PgPool, #[tx] tx: &mut PgConnection, other: PoolConnection<Postgres>, id: u64) -> Result<R, E> { write(tx).await }
        },
    );
    assert!(
        msg.starts_with("parameter `other` is a database connection")
            && msg.ends_with("leave it out with `fingerprint = [\"id\"]`"),
        "{msg}"
    );
    // token: no `#[tx]`; a listed connection is reported at its entry.
    let msg = one_err(
        quote!(
            strategy = "token",
            key = "req.id",
            fingerprint = ["req", "conn"]
        ),
        quote! {
            async fn place(store: &MemoryStore, req: &Req, conn: &mut MySqlConnection) -> Result<R, E> { Ok(R) }
        },
    );
    assert_eq!(
        msg,
        "`conn` is a database connection and cannot be part of the request fingerprint: remove it from `fingerprint`, which lists the arguments that identify the request"
    );
    // Business-table strategies do not fingerprint: their unmarked connection needs `#[tx]`.
    let msg = one_err(
        quote!(strategy = "pessimistic", key = "req.id", table = "orders"),
        quote! {
            async fn place(pool: &PgPool, req: &Req, tx: &mut PgConnection) -> Result<(), E> { Ok(()) }
        },
    );
    assert!(msg.starts_with("add `#[tx]` to `tx`:"), "{msg}");
}

#[test]
fn terminal_names_the_error_policy() {
    let out = ok(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            terminal = "AppError::is_terminal"
        ),
        place(),
    );
    assert!(
        out.contains(
            "policy : :: idempotent_runtime :: __private :: TerminalErrorType :: terminal (AppError :: is_terminal)"
        ),
        "{out}"
    );
    // Not written: every error releases the claim.
    let out = ok(
        quote!(strategy = "token", key = "req.id", store = "pool"),
        place(),
    );
    assert!(
        out.contains("policy : :: idempotent_runtime :: __private :: ReleaseAll"),
        "{out}"
    );
    let msg = one_err(
        quote!(
            strategy = "dedup_table",
            key = "req.id",
            terminal = "not a path"
        ),
        place(),
    );
    assert!(msg.starts_with("`not a path` is not a path"), "{msg}");
    let errors = errs(
        quote!(
            strategy = "unique_index",
            key = "req.id",
            table = "orders",
            terminal = "is_terminal"
        ),
        place(),
    );
    assert_eq!(
        errors[0],
        "option `terminal` is not used by strategy `unique_index`; it applies to: dedup_table, distributed_lock, token"
    );
}
