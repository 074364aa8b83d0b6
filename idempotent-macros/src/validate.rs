//! Stage 2: raw options + the function → a validated [`Config`].
//!
//! Every user-facing check runs here, before expansion starts, and every check runs even
//! after an earlier one failed, so that one compile shows every problem, each at the token
//! it is about. Checks that would only repeat an earlier problem (an option that failed to
//! parse, a strategy that is unknown) are skipped rather than cascading.
//!
//! What each strategy takes and needs comes from its row in [`crate::strategy::TABLE`]; the
//! option values are checked by [`crate::options`], the function by [`crate::signature`].

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens as _, quote};
use syn::{FnArg, ItemFn, LitStr, Pat};

use crate::diag::Errors;
use crate::model::{
    Business, BusinessRule, Config, Family, Fingerprint, FingerprintArg, InjectKind, Millis,
    OnBusy, OnCancel, OnDuplicate, PathExpr, ReplayMode, Replaying, SqlIdent, Store, Target,
};
use crate::options::{
    check_done, check_duration_floors, check_fingerprint, check_key, check_on_busy,
    check_on_cancel, check_scope_not_key, check_store, check_strategy, default_runtime,
    default_version, duration, expect_str, key_columns, parse_path_option, sql_ident,
};
use crate::parse::{OptionName, RawArgs, RawOption};
use crate::signature::{FnInfo, Param, connection_of, is_connection_type, store_without_tx};
use crate::strategy::{FamilyKind, Strategy, TxRule};
use crate::syntax::{UnrawString as _, mentions_ident, root_of_tokens};

/// The option values that passed their checks (`None`: absent, unused by the strategy, or
/// malformed and reported).
struct Checked {
    /// `name`, or the default name expression.
    name: TokenStream,
    /// `scope`.
    scope: Option<PathExpr>,
    /// `fingerprint`, or its default.
    fingerprint: Option<Fingerprint>,
    /// `lease`.
    lease: Option<Millis>,
    /// `ttl`.
    ttl: Option<Millis>,
    /// `on_busy`.
    on_busy: Option<OnBusy>,
    /// `on_cancel`.
    on_cancel: Option<OnCancel>,
    /// `table`.
    table: Option<SqlIdent>,
    /// `column`.
    column: Option<SqlIdent>,
    /// `status_column`.
    status_column: Option<SqlIdent>,
    /// `constraint`.
    constraint: Option<SqlIdent>,
    /// `version`.
    version: Option<PathExpr>,
    /// `from`.
    from: Option<LitStr>,
    /// `to`.
    to: Option<LitStr>,
    /// `done` (empty when not given).
    done: Option<Vec<LitStr>>,
    /// `on_duplicate`.
    on_duplicate: Option<TokenStream>,
    /// `terminal`.
    terminal: Option<TokenStream>,
}

/// Checks `args` against `func` and returns the configuration, or every
/// problem found (together with the ones already in `errors`).
pub(crate) fn validate(args: &RawArgs, func: &ItemFn, mut errors: Errors) -> syn::Result<Config> {
    let info = FnInfo::analyze(func, &mut errors);
    let strategy = check_strategy(args, &mut errors);

    if let Some((strategy, _)) = strategy {
        check_options_used(args, strategy, &mut errors);
        check_injected(strategy, &info, &mut errors);
        check_tx_used(strategy, &info, func, &mut errors);
    }
    // An option the strategy does not use is reported above and not checked further.
    let usable = |name: OptionName| -> Option<&RawOption> {
        let option = args.get(name)?;
        match strategy {
            Some((strategy, _)) if !strategy.accepts(name) => None,
            _ => Some(option),
        }
    };

    let runtime = match usable(OptionName::Crate).and_then(|o| expect_str(o, &mut errors)) {
        Some(lit) => parse_path_option(lit, "crate = \"::idempotent_runtime\"", &mut errors)
            .unwrap_or_else(default_runtime),
        None => default_runtime(),
    };

    let name = check_name(usable(OptionName::Name), func, &mut errors);

    let key = check_key(args, &info, &mut errors);
    if let (Some((strategy, _)), Some(key)) = (strategy, &key)
        && let Some(limit) = &strategy.rules().key_limit
        && let Some(extra) = key.get(limit.max)
    {
        errors.at(
            extra.span,
            limit.message.replace("{strategy}", strategy.as_str()),
        );
    }

    let scope = usable(OptionName::Scope)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| info.path_expr(lit, OptionName::Scope, &mut errors))
        .filter(|scope| {
            key.as_deref()
                .is_none_or(|key| check_scope_not_key(scope, key, &mut errors))
        });

    let store = check_store(usable(OptionName::Store), &info, &mut errors);
    if let Some((strategy, strategy_span)) = strategy {
        check_tx_given(strategy, strategy_span, &info, store.as_ref(), &mut errors);
        check_tx_store(strategy, &info, store.as_ref(), &mut errors);
    }

    let fingerprint =
        check_fingerprint(usable(OptionName::Fingerprint), &info, &store, &mut errors);
    if let (Some((strategy, _)), Some(Fingerprint::Args(args))) = (strategy, &fingerprint) {
        check_connection_fingerprinted(strategy, &info, store.as_ref(), args, &mut errors);
    }

    let lease = usable(OptionName::Lease)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| {
            duration(
                lit,
                &lit.value(),
                "a zero `lease` would expire at once; write e.g. \"30s\"",
                &mut errors,
            )
        });
    let ttl = usable(OptionName::Ttl)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| {
            duration(
                lit,
                &lit.value(),
                "a zero `ttl` would forget the record at once; write e.g. \"24h\"",
                &mut errors,
            )
        });
    let on_busy = usable(OptionName::OnBusy)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| check_on_busy(lit, &mut errors));
    let on_cancel = usable(OptionName::OnCancel)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| check_on_cancel(lit, &mut errors));
    check_duration_floors(lease.as_ref(), ttl.as_ref(), on_busy.as_ref(), &mut errors);

    let sql = |name: OptionName, errors: &mut Errors| {
        usable(name)
            .and_then(|o| expect_str(o, errors))
            .and_then(|lit| sql_ident(lit, name, errors))
    };
    let table = sql(OptionName::Table, &mut errors);
    let column = sql(OptionName::Column, &mut errors);
    let status_column = sql(OptionName::StatusColumn, &mut errors);
    let constraint = sql(OptionName::Constraint, &mut errors);
    let version = usable(OptionName::Version)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| info.path_expr(lit, OptionName::Version, &mut errors));
    let state = |name: OptionName, errors: &mut Errors| {
        let lit = usable(name).and_then(|o| expect_str(o, errors))?;
        if lit.value().trim().is_empty() {
            errors.at(
                lit.span(),
                format!(
                    "`{}` is empty; write the status value, e.g. {} = \"PAID\"",
                    name.as_str(),
                    name.as_str()
                ),
            );
            return None;
        }
        Some(lit.clone())
    };
    let from = state(OptionName::From, &mut errors);
    let to = state(OptionName::To, &mut errors);
    if let (Some(from), Some(to)) = (&from, &to)
        && from.value() == to.value()
    {
        errors.at(
            to.span(),
            format!(
                "`from` and `to` are both \"{}\"; a transition needs two different states",
                to.value()
            ),
        );
    }
    let done = usable(OptionName::Done).and_then(|o| check_done(o, from.as_ref(), &mut errors));
    let on_duplicate = usable(OptionName::OnDuplicate)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| {
            parse_path_option(lit, "on_duplicate = \"Self::on_duplicate\"", &mut errors)
        });
    let terminal = usable(OptionName::Terminal)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| {
            parse_path_option(lit, "terminal = \"AppError::is_terminal\"", &mut errors)
        });

    let checked = Checked {
        name,
        scope,
        fingerprint,
        lease,
        ttl,
        on_busy,
        on_cancel,
        table,
        column,
        status_column,
        constraint,
        version,
        from,
        to,
        done,
        on_duplicate,
        terminal,
    };
    let family = strategy.and_then(|(strategy, span)| {
        check_required(args, strategy, span, &mut errors);
        family(
            args,
            func,
            &info,
            strategy,
            key.as_deref(),
            checked,
            &mut errors,
        )
    });

    errors.finish()?;

    // All errors are reported above; reaching this point means each required
    // piece is present.
    let (Some(key), Some(store), Some(family)) = (key, store, family) else {
        return Err(syn::Error::new(
            Span::call_site(),
            "internal error in #[idempotent]: incomplete configuration without a reported error",
        ));
    };
    Ok(Config {
        runtime,
        key,
        store,
        injected: [info.tx.as_ref(), info.fence.as_ref()]
            .into_iter()
            .flatten()
            .map(|injected| injected.index)
            .collect(),
        ok_type: info.ok_type,
        err_span: info.err_span.0,
        err_end: info.err_span.1,
        family,
    })
}

/// Every option the strategy does not take is an error naming the strategies that do.
fn check_options_used(args: &RawArgs, strategy: Strategy, errors: &mut Errors) {
    for option in &args.options {
        if !strategy.accepts(option.name) {
            errors.at(
                option.ident.span(),
                format!(
                    "option `{}` is not used by strategy `{}`; it applies to: {}",
                    option.name.as_str(),
                    strategy.as_str(),
                    Strategy::list_where(|rules| rules.strategy.accepts(option.name)),
                ),
            );
        }
    }
}

/// `#[tx]` as the strategy's [`TxRule`] says, `#[fence]` only where a fencing token is issued.
fn check_injected(strategy: Strategy, info: &FnInfo, errors: &mut Errors) {
    let rules = strategy.rules();
    if let Some(tx) = &info.tx
        && rules.tx == TxRule::Forbidden
    {
        errors.push(syn::Error::new_spanned(
            &tx.attr,
            format!(
                "`#[tx]` needs a SQL strategy ({}); strategy `{}` has no transaction to inject",
                Strategy::list_where(|rules| rules.tx != TxRule::Forbidden),
                strategy.as_str()
            ),
        ));
    }
    if let Some(fence) = &info.fence
        && !rules.fence
    {
        errors.push(syn::Error::new_spanned(
            &fence.attr,
            format!(
                "`#[fence]` needs a lock-based strategy ({}); strategy `{}` issues no fencing token",
                Strategy::list_where(|rules| rules.fence),
                strategy.as_str()
            ),
        ));
    }
}

/// A strategy that runs the body in its own transaction needs a `#[tx]` parameter. A
/// connection-typed parameter without `#[tx]` is the one meant: the error is at it, saying to
/// add `#[tx]`. The connection to write is the store's database's when the store's type names
/// it (`pool: &SqlitePool` → `SqliteConnection`), else the parameter's, else all three.
fn check_tx_given(
    strategy: Strategy,
    strategy_span: Span,
    info: &FnInfo,
    store: Option<&Store>,
    errors: &mut Errors,
) {
    // A malformed `#[tx]` is reported where it is written, not as a missing one.
    if strategy.rules().tx != TxRule::Required || info.tx_marked {
        return;
    }
    let store_root = store.and_then(|store| root_of_tokens(&store.tokens));
    let param = info.params.iter().find(|p| {
        p.injected.is_none()
            && is_connection_type(&p.ty)
            && !p.bindings.iter().any(|b| Some(b) == store_root.as_ref())
    });
    let connection = store
        .and_then(|store| info.store_connection(&store.tokens))
        .or_else(|| param.and_then(|p| connection_of(&p.ty)));
    let ty = match connection {
        Some(connection) => format!("&mut {connection}"),
        None => "&mut PgConnection".to_owned(),
    };
    let of_database = match connection {
        Some(_) => String::new(),
        None => " (the connection of the store's database: `PgConnection`, `MySqlConnection` or `SqliteConnection`)".to_owned(),
    };
    match param {
        Some(param) => {
            let name = param
                .simple
                .as_ref()
                .map_or_else(|| "tx".to_owned(), |n| n.unraw_string());
            errors.push(syn::Error::new_spanned(
                &param.written,
                format!(
                    "add `#[tx]` to `{name}`: strategy `{}` runs the body inside its own transaction and lends it to the parameter marked `#[tx]`; write `#[tx] {name}: {ty}`{of_database} and write through it",
                    strategy.as_str()
                ),
            ));
        }
        None => errors.at(
            strategy_span,
            format!(
                "strategy `{}` runs the body inside its own transaction: add a parameter `#[tx] tx: {ty}`{of_database} and write through it",
                strategy.as_str()
            ),
        ),
    }
}

/// A `#[tx]` store that is visibly a store without transactions (a parameter typed
/// `MemoryStore` or `RedisStore`): one error at the store naming the rule — `#[tx]` lends the
/// body the transaction the store opens — and the fix, instead of the store-argument trait's
/// error (whose notes cover every kind of store). A store the macro cannot see the type of
/// (`self.store`) is left to that trait.
fn check_tx_store(strategy: Strategy, info: &FnInfo, store: Option<&Store>, errors: &mut Errors) {
    let rules = strategy.rules();
    if info.tx.is_none() || rules.tx == TxRule::Forbidden {
        return;
    }
    let Some(store) = store else {
        return;
    };
    let Some(kind) = info
        .store_param(&store.tokens)
        .and_then(|param| store_without_tx(&param.ty))
    else {
        return;
    };
    let written = store.tokens.to_string();
    let fix = match rules.tx {
        TxRule::Optional => format!(
            "write store = \"...\" naming a sqlx pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`) of the `#[tx]` parameter's database, or remove `#[tx]` to claim in the `{kind}` outside the body (claim mode: the record is committed first and the body may use any connection)"
        ),
        TxRule::Required | TxRule::Forbidden => format!(
            "write store = \"...\" naming a sqlx pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`) of the `#[tx]` parameter's database, or a `&mut` connection of it; strategy `{}` works on a SQL business table, which a `{kind}` cannot hold",
            strategy.as_str()
        ),
    };
    errors.at(
        store.span,
        format!(
            "the store `{written}` is a `{kind}`, which has no transactions: with `#[tx]`, strategy `{}` runs the body in a transaction the store opens and lends it to the `#[tx]` parameter, so the store must be a SQL database; {fix}",
            strategy.as_str()
        ),
    );
}

/// A connection parameter (`tx: &mut SqliteConnection`) that a replaying strategy would
/// fingerprint: a connection is not `Serialize`, and rustc's own error about it suggests
/// borrowing it mutably. One error at the parameter (or at its `fingerprint` entry) instead,
/// saying to leave it out of the fingerprint, and for `dedup_table` (no `#[tx]` yet) that
/// `#[tx]` runs the body in the idempotency record's transaction. The business-table
/// strategies do not fingerprint; their connection without `#[tx]` is [`check_tx_given`]'s.
fn check_connection_fingerprinted(
    strategy: Strategy,
    info: &FnInfo,
    store: Option<&Store>,
    args: &[FingerprintArg],
    errors: &mut Errors,
) {
    if strategy.rules().family != FamilyKind::Replaying {
        return;
    }
    // A pool or connection parameter (by its type's name): never part of a fingerprint.
    let is_database =
        |param: &Param| is_connection_type(&param.ty) || connection_of(&param.ty).is_some();
    let found = args.iter().find_map(|arg| {
        let param = info.params.iter().find(|p| {
            p.injected.is_none()
                && is_connection_type(&p.ty)
                && p.bindings.iter().any(|b| b.unraw_string() == arg.label)
        })?;
        Some((arg, param))
    });
    let Some((arg, param)) = found else {
        return;
    };
    let name = &arg.label;
    let connection = store
        .and_then(|store| info.store_connection(&store.tokens))
        .or_else(|| connection_of(&param.ty));
    let tx_hint = match (strategy.rules().tx, info.tx_marked, connection) {
        (TxRule::Optional, false, Some(connection)) => format!(
            "mark it `#[tx] {name}: &mut {connection}` to run the body in the transaction that writes the idempotency record (transactional mode: the body's writes commit or roll back with the record), or "
        ),
        (TxRule::Optional, false, None) => format!(
            "mark it `#[tx]` (`#[tx] {name}: &mut PgConnection`, `MySqlConnection` or `SqliteConnection`, the store's database) to run the body in the transaction that writes the idempotency record (transactional mode: the body's writes commit or roll back with the record), or "
        ),
        _ => String::new(),
    };
    if arg.listed {
        errors.at(
            arg.span,
            format!(
                "`{name}` is a database connection and cannot be part of the request fingerprint: {tx_hint}remove it from `fingerprint`, which lists the arguments that identify the request"
            ),
        );
        return;
    }
    // The arguments that identify the request: the other fingerprinted ones but databases.
    let rest: Vec<String> = args
        .iter()
        .filter(|a| {
            !a.listed
                && !info.params.iter().any(|p| {
                    is_database(p) && p.bindings.iter().any(|b| b.unraw_string() == a.label)
                })
        })
        .map(|a| format!("\"{}\"", a.label))
        .collect();
    let leave_out = if rest.is_empty() {
        "`fingerprint = false` (no other argument to fingerprint)".to_owned()
    } else {
        format!("`fingerprint = [{}]`", rest.join(", "))
    };
    errors.push(syn::Error::new_spanned(
        &param.written,
        format!(
            "parameter `{name}` is a database connection and cannot be fingerprinted (by default the request fingerprint takes every parameter but `self`, the store and `#[tx]`/`#[fence]`): {tx_hint}leave it out with {leave_out}"
        ),
    ));
}

/// A body that never names its `#[tx]` parameter writes, if at all, through another
/// connection: outside the strategy's transaction (not rolled back with it, not atomic with its
/// check or record) and waiting on the locks that transaction holds — PostgreSQL and MariaDB
/// until a lock timeout or for ever, SQLite until `Contention`. An error at the parameter, even
/// for `_tx`: the name only silences rustc's warning.
fn check_tx_used(strategy: Strategy, info: &FnInfo, func: &ItemFn, errors: &mut Errors) {
    let rules = strategy.rules();
    let Some(tx) = &info.tx else {
        return;
    };
    let name = tx.ident.unraw_string();
    if rules.tx == TxRule::Forbidden || mentions_ident(&func.block.to_token_stream(), &name) {
        return;
    }
    let underscore = if name.starts_with('_') {
        " (the leading `_` only silences rustc's warning)"
    } else {
        ""
    };
    let what_to_write = match rules.family {
        FamilyKind::Business => {
            format!("run the body's queries on `{name}`, e.g. `.execute(&mut *{name})`")
        }
        FamilyKind::Replaying => format!(
            "run the body's queries on `{name}`, e.g. `.execute(&mut *{name})`, or remove `#[tx]` for claim mode, where the record is committed first and the body may use any connection"
        ),
    };
    let (ident, ty) = (&tx.ident, &tx.ty);
    errors.push(syn::Error::new_spanned(
        quote!(#ident: #ty),
        format!(
            "the body never uses `{name}`{underscore}: strategy `{}` runs the body in a transaction on `{name}` that {}. A query through the pool or another connection is outside that transaction (not rolled back or committed with it) and waits for the locks it holds: on PostgreSQL and MySQL/MariaDB until a lock timeout or for ever, on SQLite until `Error::Contention`; {what_to_write}",
            strategy.as_str(),
            rules.tx_holds,
        ),
    ));
}

/// The options the strategy needs and has no default for (README: the attribute's options). An option that is
/// written but malformed is reported as such, not as missing.
fn check_required(args: &RawArgs, strategy: Strategy, span: Span, errors: &mut Errors) {
    let rules = strategy.rules();
    let given = |name: OptionName| args.get(name).is_some();
    // Every missing option in one error (they are all reported at the strategy).
    let missing: Vec<_> = rules
        .required
        .iter()
        .filter(|required| !given(required.option))
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|r| format!("`{}`", r.option.as_str()))
            .collect();
        let adds: Vec<String> = missing
            .iter()
            .map(|r| format!("{} = \"...\"", r.option.as_str()))
            .collect();
        let mut hints: Vec<&str> = Vec::new();
        for required in &missing {
            if !hints.contains(&required.hint) {
                hints.push(required.hint);
            }
        }
        errors.at(
            span,
            format!(
                "strategy `{}` needs {}: add {} {}",
                strategy.as_str(),
                and_list(&names),
                adds.join(", "),
                hints.join("; "),
            ),
        );
    }
    if let Some((options, message)) = rules.one_of
        && !options.iter().any(|&option| given(option))
    {
        errors.at(span, message);
    }
}

/// `name = "..."`, or `module_path!()::fn_name` — for methods too: a compile-time constant
/// that no compiler version spells differently. Same-named methods of two types (or two impls)
/// in one module get the same default name; the macro cannot see the impl block, so that is
/// found when the program first calls one of them (see `idempotent_runtime::operation`).
fn check_name(option: Option<&RawOption>, func: &ItemFn, errors: &mut Errors) -> TokenStream {
    match option.and_then(|o| expect_str(o, errors)) {
        Some(lit) if lit.value().trim().is_empty() => {
            errors.at(
                lit.span(),
                "`name` is empty; write a stable operation name such as \"orders.place\"",
            );
        }
        Some(lit) => return lit.to_token_stream(),
        None => {}
    }
    let fn_name = func.sig.ident.unraw_string();
    quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
}

/// The strategy's family with everything its expansion needs; `None` when a piece is
/// missing (and reported).
fn family(
    args: &RawArgs,
    func: &ItemFn,
    info: &FnInfo,
    strategy: Strategy,
    key: Option<&[PathExpr]>,
    checked: Checked,
    errors: &mut Errors,
) -> Option<Family> {
    let rules = strategy.rules();
    // Exhaustive (no `_` arm), here and for the business rule below: a new strategy that
    // is not given its model variant does not compile.
    let mode = match strategy {
        Strategy::Token => Some(ReplayMode::Token(key?.first()?.clone())),
        Strategy::DistributedLock => Some(ReplayMode::DistributedLock(info.fence.clone())),
        Strategy::DedupTable => Some(match &info.tx {
            Some(tx) => ReplayMode::DedupTableInTx(tx.clone()),
            None => ReplayMode::DedupTable,
        }),
        Strategy::SelectBeforeInsert
        | Strategy::Pessimistic
        | Strategy::Optimistic
        | Strategy::UniqueIndex
        | Strategy::StateMachine => None,
    };
    match (rules.family, mode) {
        (FamilyKind::Business, None) => {}
        (FamilyKind::Replaying, Some(mode)) => {
            // Reported at the option's name once its value is known good (a bad value is one
            // error, already reported).
            let on_cancel = match (&mode, checked.on_cancel, args.get(OptionName::OnCancel)) {
                (ReplayMode::DedupTableInTx(_), Some(_), Some(option)) => {
                    errors.at(
                        option.ident.span(),
                        "`on_cancel` does not apply with `#[tx]`: a future dropped mid-body rolls its transaction back, claim included, so there is no claim to keep or release; remove on_cancel, or drop `#[tx]` to use claim mode",
                    );
                    None
                }
                (_, on_cancel, _) => on_cancel,
            };
            return Some(Family::Replaying(Replaying {
                mode,
                name: checked.name,
                scope: checked.scope,
                fingerprint: checked.fingerprint?,
                lease: checked.lease,
                ttl: checked.ttl,
                on_busy: checked.on_busy,
                on_cancel,
                terminal: checked.terminal,
            }));
        }
        _ => {
            errors.at(
                Span::call_site(),
                format!(
                    "internal error of #[idempotent]: the rule table and the model disagree on the family of `{}`",
                    rules.name
                ),
            );
            return None;
        }
    }

    let given = |name: OptionName| args.get(name).is_some();
    let columns = match key {
        Some(key) if checked.table.is_some() || rules.defaults.contains(&OptionName::Column) => {
            key_columns(
                key,
                checked.column,
                given(OptionName::Column),
                rules.defaults.contains(&OptionName::Column),
                errors,
            )
        }
        _ => None,
    };
    let target = checked
        .table
        .zip(columns)
        .map(|(table, columns)| Target { table, columns });
    let version = match (checked.version, key) {
        (Some(version), _) => Some(version),
        (None, Some(key))
            if rules.defaults.contains(&OptionName::Version) && !given(OptionName::Version) =>
        {
            default_version(key, errors)
        }
        (None, _) => None,
    };
    let on_duplicate = checked
        .on_duplicate
        .and_then(|path| on_duplicate(path, func, errors));
    let rule = match strategy {
        Strategy::SelectBeforeInsert => BusinessRule::SelectBeforeInsert(target?),
        Strategy::Pessimistic => BusinessRule::Pessimistic(target?),
        Strategy::Optimistic => BusinessRule::Optimistic {
            target: target?,
            version: version?,
        },
        Strategy::UniqueIndex => BusinessRule::UniqueIndex {
            constraint: checked.constraint,
            target,
        },
        Strategy::StateMachine => BusinessRule::StateMachine {
            target: target?,
            status_column: checked.status_column?,
            from: checked.from?,
            to: checked.to?,
            done: match (checked.done, given(OptionName::Done)) {
                (Some(done), _) => done,
                // A malformed `done`: already reported.
                (None, true) => return None,
                (None, false) => Vec::new(),
            },
        },
        Strategy::DedupTable | Strategy::DistributedLock | Strategy::Token => return None,
    };
    Some(Family::Business(Business {
        rule,
        tx: info.tx.clone()?,
        on_duplicate,
    }))
}

/// `on_duplicate = "path"`: called with every argument but the injected ones, by name, so
/// each of those parameters needs a plain name.
fn on_duplicate(path: TokenStream, func: &ItemFn, errors: &mut Errors) -> Option<OnDuplicate> {
    let mut args = Vec::new();
    let mut ok = true;
    for arg in &func.sig.inputs {
        if let FnArg::Typed(typed) = arg
            && typed
                .attrs
                .iter()
                .any(|attr| InjectKind::of(attr).is_some())
        {
            continue;
        }
        match arg {
            FnArg::Receiver(_) => args.push(quote!(self)),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => {
                    let ident = &pat.ident;
                    args.push(quote!(#ident));
                }
                other => {
                    errors.push(syn::Error::new_spanned(
                        other,
                        "`on_duplicate` passes every argument on by name: give this parameter a plain name (`name: Type`)",
                    ));
                    ok = false;
                }
            },
        }
    }
    ok.then_some(OnDuplicate { path, args })
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
