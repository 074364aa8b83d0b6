//! Checks of the options' values, each turning a raw option into its validated form or
//! recording why it cannot: `strategy`, `key`, `scope`, `store`, `fingerprint`, durations,
//! `on_busy`, `on_cancel`, SQL identifiers, paths, and the defaults derived from the key.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::{Ident, LitStr};

use crate::diag::{Errors, did_you_mean};
use crate::model::{
    Fingerprint, FingerprintArg, Millis, OnBusy, OnCancel, PathExpr, SqlIdent, Store,
};
use crate::parse::{OptionName, RawArgs, RawOption, RawValue};
use crate::signature::{DEFAULT_STORE_NAMES, FnInfo, KeyExample, reference_kind};
use crate::strategy::Strategy;
use crate::syntax::{UnrawString as _, field_span, respan, root_ident, root_of_tokens};

/// `::idempotent_runtime`.
pub(crate) fn default_runtime() -> TokenStream {
    quote!(::idempotent_runtime)
}

/// `strategy = "..."`: required, one of the strategies in [`crate::strategy::TABLE`].
pub(crate) fn check_strategy(args: &RawArgs, errors: &mut Errors) -> Option<(Strategy, Span)> {
    let names = Strategy::names();
    let Some(option) = args.get(OptionName::Strategy) else {
        errors.at(
            Span::call_site(),
            format!(
                "missing `strategy`: add strategy = \"...\" with one of: {}",
                names.join(", ")
            ),
        );
        return None;
    };
    let lit = expect_str(option, errors)?;
    let text = lit.value();
    match Strategy::from_name(text.trim()) {
        Some(strategy) => Some((strategy, lit.span())),
        None => {
            errors.at(
                lit.span(),
                format!(
                    "unknown strategy `{text}`{}; valid strategies are: {}",
                    did_you_mean(text.trim(), &names),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// `key = "a.b"` or `key = ["a.b", "c"]`: required, each part rooted at a parameter.
pub(crate) fn check_key(
    args: &RawArgs,
    info: &FnInfo,
    errors: &mut Errors,
) -> Option<Vec<PathExpr>> {
    let Some(option) = args.get(OptionName::Key) else {
        // The store is never the key: `store`'s root when written, else the default's names.
        let store_root = args
            .get(OptionName::Store)
            .and_then(|o| match o.value.as_ref()? {
                RawValue::Str(lit) => syn::parse_str::<syn::Expr>(lit.value().trim()).ok(),
                _ => None,
            })
            .and_then(|expr| root_ident(&expr).map(|root| root.unraw_string()));
        let example = match info.key_example(store_root.as_deref()) {
            KeyExample::Param(name) => format!("e.g. key = \"{name}\""),
            KeyExample::Field(name) => format!(
                "e.g. key = \"{name}.request_id\", the field of `{name}` that carries the request's id"
            ),
            KeyExample::None => "e.g. key = \"req.request_id\"; no parameter here but the store can carry it: add one, such as the request or its id".to_owned(),
        };
        errors.at(
            Span::call_site(),
            format!(
                "missing `key`: add key = \"...\", a path rooted at a parameter that identifies the request ({example})"
            ),
        );
        return None;
    };
    let lits: Vec<&LitStr> = match option.value.as_ref()? {
        RawValue::Str(lit) => vec![lit],
        RawValue::List { items, span } => {
            if items.is_empty() {
                errors.at(
                    *span,
                    "`key` needs at least one part: write key = \"order.code\" or key = [\"order.user_id\", \"order.code\"]",
                );
                return None;
            }
            items.iter().collect()
        }
        RawValue::Bool(lit) => {
            errors.at(
                lit.span(),
                "option `key` takes a string or a list of strings, e.g. key = \"order.code\" or key = [\"order.user_id\", \"order.code\"]",
            );
            return None;
        }
    };
    let parts: Vec<Option<PathExpr>> = lits
        .into_iter()
        .map(|lit| info.path_expr(lit, OptionName::Key, errors))
        .collect();
    let parts: Vec<PathExpr> = parts.into_iter().collect::<Option<_>>()?;
    let mut distinct = true;
    for (index, part) in parts.iter().enumerate() {
        if parts[..index]
            .iter()
            .any(|earlier| earlier.text == part.text)
        {
            errors.at(
                part.span,
                format!(
                    "`{}` is listed twice in `key`; a compound key names each part once",
                    part.text
                ),
            );
            distinct = false;
        }
    }
    distinct.then_some(parts)
}

/// A `scope` that is also a key part would make the key the same for every scope value: the
/// two options conflict.
pub(crate) fn check_scope_not_key(scope: &PathExpr, key: &[PathExpr], errors: &mut Errors) -> bool {
    if key.iter().any(|part| part.text == scope.text) {
        errors.at(
            scope.span,
            format!(
                "`{}` is both the `scope` and a `key` part; the scope names the caller or tenant (e.g. scope = \"ctx.tenant_id\") and the key the request within it",
                scope.text
            ),
        );
        return false;
    }
    true
}

/// `store = "..."` or its default.
pub(crate) fn check_store(
    option: Option<&RawOption>,
    info: &FnInfo,
    errors: &mut Errors,
) -> Option<Store> {
    if let Some(option) = option {
        let lit = expect_str(option, errors)?;
        let expr = info.path_expr(lit, OptionName::Store, errors)?;
        let kind = info.store_kind(&expr);
        return Some(Store {
            tokens: expr.tokens,
            span: expr.span,
            kind,
        });
    }
    for param in &info.params {
        if param.injected.is_none()
            && let Some(ident) = &param.simple
            && DEFAULT_STORE_NAMES.iter().any(|n| ident == n)
        {
            return Some(Store {
                tokens: ident.to_token_stream(),
                span: ident.span(),
                kind: reference_kind(&param.ty),
            });
        }
    }
    // A method's store is a field of `self`, and a macro cannot see the struct's fields: no
    // default could try `self.db` and then `self.store`, so the field is named. The suggestion
    // is a parameter whose type is a pool or store, else a store-like field the body uses.
    let by_default = "only a parameter named `db`, `pool` or `store` is the store without it";
    let message = match (info.store_example(), info.has_self) {
        (Some(example), true) if example.starts_with("self.") => format!(
            "`store` is missing: add store = \"{example}\" if that field holds the pool or store (a method names its store field: the macro cannot see the struct's fields)"
        ),
        (Some(example), _) => format!(
            "`store` is missing: add store = \"{example}\", the parameter whose type is a pool or store ({by_default})"
        ),
        (None, true) => "`store` is missing: a method names its store field, e.g. store = \"self.db\" (the field holding the pool or store); the macro cannot see the struct's fields".to_owned(),
        (None, false) => format!(
            "`store` is missing: add store = \"...\", an expression rooted at a parameter that gives the backend: a sqlx pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`), an `idempotent_runtime::MemoryStore` or `RedisStore`, or a `&mut` connection with `#[tx]`; no parameter here has such a type ({by_default})"
        ),
    };
    errors.at(Span::call_site(), message);
    None
}

/// `fingerprint = false | "a" | ["a", "b"]` or its default (every parameter
/// except `self`, the store's root and injected ones).
pub(crate) fn check_fingerprint(
    option: Option<&RawOption>,
    info: &FnInfo,
    store: &Option<Store>,
    errors: &mut Errors,
) -> Option<Fingerprint> {
    let lits: Vec<&LitStr> = match option.map(|o| o.value.as_ref()) {
        // Malformed value: already reported.
        Some(None) => return None,
        Some(Some(RawValue::Bool(lit))) if !lit.value() => {
            return Some(Fingerprint::Disabled(lit.span()));
        }
        Some(Some(RawValue::Str(lit))) => vec![lit],
        Some(Some(RawValue::List { items, span })) => {
            if items.is_empty() {
                errors.at(
                    *span,
                    "`fingerprint` lists no arguments; write fingerprint = false to turn it off",
                );
                return None;
            }
            items.iter().collect()
        }
        // Omitted, or `fingerprint = true`: the default.
        None | Some(Some(RawValue::Bool(_))) => {
            let store_root = store.as_ref().and_then(|s| root_of_tokens(&s.tokens));
            let args = info
                .params
                .iter()
                .filter(|p| p.injected.is_none())
                .flat_map(|p| p.bindings.iter())
                .filter(|ident| store_root.as_ref() != Some(*ident))
                .map(|ident| FingerprintArg {
                    label: ident.unraw_string(),
                    tokens: ident.to_token_stream(),
                    span: ident.span(),
                    listed: false,
                })
                .collect();
            return Some(Fingerprint::Args(args));
        }
    };
    let mut args: Vec<FingerprintArg> = Vec::new();
    let mut ok = true;
    for lit in lits {
        match info.path_expr(lit, OptionName::Fingerprint, errors) {
            Some(expr) => {
                if args.iter().any(|a| a.label == expr.text) {
                    errors.at(
                        lit.span(),
                        format!("`{}` is listed twice in `fingerprint`", expr.text),
                    );
                    ok = false;
                    continue;
                }
                args.push(FingerprintArg {
                    label: expr.text,
                    tokens: expr.tokens,
                    span: expr.span,
                    listed: true,
                });
            }
            None => ok = false,
        }
    }
    ok.then_some(Fingerprint::Args(args))
}

/// `on_busy = "reject" | "wait(5s)"`.
pub(crate) fn check_on_busy(lit: &LitStr, errors: &mut Errors) -> Option<OnBusy> {
    let text = lit.value();
    let trimmed = text.trim();
    if trimmed == "reject" {
        return Some(OnBusy::Reject(lit.span()));
    }
    let inner = trimmed
        .strip_prefix("wait")
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix('('))
        .and_then(|rest| rest.strip_suffix(')'));
    match inner {
        Some(inner) => duration(
            lit,
            inner.trim(),
            "`wait(0s)` would not wait; write on_busy = \"reject\" or a positive wait such as \"wait(5s)\"",
            errors,
        )
        .map(OnBusy::Wait),
        None => {
            errors.at(
                lit.span(),
                format!(
                    "`{text}` is not an on_busy policy; write on_busy = \"reject\" or on_busy = \"wait(5s)\""
                ),
            );
            None
        }
    }
}

/// `on_cancel = "keep" | "release"`.
pub(crate) fn check_on_cancel(lit: &LitStr, errors: &mut Errors) -> Option<OnCancel> {
    match lit.value().trim() {
        "keep" => Some(OnCancel::Keep(lit.span())),
        "release" => Some(OnCancel::Release(lit.span())),
        text => {
            errors.at(
                lit.span(),
                format!(
                    "`{text}` is not an on_cancel policy; write on_cancel = \"keep\" (a future dropped mid-body keeps its claim until the lease ends, the default) or on_cancel = \"release\" (it frees the key at once, so a retry may run the body again)"
                ),
            );
            None
        }
    }
}

/// `done = ["SHIPPED", "DELIVERED"]` (`state_machine`): the states past `to` that count as
/// already applied. A list of non-empty state names (a single string is a list of one), none
/// of them `from` (a row still in `from` has not moved) and none twice.
pub(crate) fn check_done(
    option: &RawOption,
    from: Option<&LitStr>,
    errors: &mut Errors,
) -> Option<Vec<LitStr>> {
    const EXAMPLE: &str = "done = [\"SHIPPED\", \"DELIVERED\"]";
    let items: Vec<LitStr> = match option.value.as_ref()? {
        RawValue::Str(lit) => vec![lit.clone()],
        RawValue::List { items, span } => {
            if items.is_empty() {
                errors.at(
                    *span,
                    format!(
                        "`done` lists no states; name the states that count as already applied (`to` always does), e.g. {EXAMPLE}, or leave `done` out"
                    ),
                );
                return None;
            }
            items.clone()
        }
        RawValue::Bool(lit) => {
            errors.at(
                lit.span(),
                format!(
                    "option `done` takes a list of states that count as already applied, e.g. {EXAMPLE}"
                ),
            );
            return None;
        }
    };
    let mut ok = true;
    for (index, item) in items.iter().enumerate() {
        let value = item.value();
        if value.trim().is_empty() {
            errors.at(
                item.span(),
                format!("a state in `done` is empty; write the status value, e.g. {EXAMPLE}"),
            );
            ok = false;
        } else if from.is_some_and(|from| from.value() == value) {
            errors.at(
                item.span(),
                format!(
                    "\"{value}\" is the `from` state, so it cannot count as already applied: a row still in `from` has not moved yet; remove it from `done`"
                ),
            );
            ok = false;
        } else if items[..index]
            .iter()
            .any(|earlier| earlier.value() == value)
        {
            errors.at(
                item.span(),
                format!("\"{value}\" is listed twice in `done`; name each state once"),
            );
            ok = false;
        }
    }
    ok.then_some(items)
}

/// The runtime's duration floors and defaults, in milliseconds: `idempotent_runtime::strategy::
/// durations::{MIN_LEASE, MIN_WAIT, DEFAULT_LEASE, DEFAULT_TTL}`, repeated here because a
/// proc-macro crate cannot depend on the runtime. Keep them equal: `tests/tests/durations.rs`
/// (the runtime's values, and attributes at the floor that run) and the ui cases
/// `tests/ui/{pass,fail}/duration_floor*.rs` (at the floor, just below it) fail when they drift.
pub(crate) const MIN_LEASE_MS: u64 = 300;
/// See [`MIN_LEASE_MS`].
pub(crate) const MIN_WAIT_MS: u64 = 10;
/// See [`MIN_LEASE_MS`].
pub(crate) const DEFAULT_LEASE_MS: u64 = 30_000;
/// See [`MIN_LEASE_MS`].
pub(crate) const DEFAULT_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// `ms` as the attribute would spell it (`300ms`, `30s`, `24h`, `1s 500ms`).
fn spelled(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
    }
}

/// The durations against what the protocol needs (the runtime checks the same floors for
/// options built in code): `lease` at least [`MIN_LEASE_MS`], `ttl` at least the lease (given
/// or default), `wait(..)` at least [`MIN_WAIT_MS`]. Each error is at the literal it is about.
pub(crate) fn check_duration_floors(
    lease: Option<&Millis>,
    ttl: Option<&Millis>,
    on_busy: Option<&OnBusy>,
    errors: &mut Errors,
) {
    if let Some(lease) = lease
        && lease.ms < MIN_LEASE_MS
    {
        errors.at(
            lease.span,
            format!(
                "`lease = \"{}\"` is too short: the claim is renewed every lease/3 by one round trip to the store, and a renewal that fails must leave time for the next one before the lease ends; use at least \"{}\"",
                lease.text,
                spelled(MIN_LEASE_MS)
            ),
        );
    }
    const WHY_TTL: &str = "the completed record must outlive the claim it replaces, or a retry that waited out the claim finds no record and runs the body again";
    match (lease, ttl) {
        (_, Some(ttl)) => {
            let (lease_ms, which) = lease.map_or((DEFAULT_LEASE_MS, "the default lease"), |l| {
                (l.ms, "the lease")
            });
            if ttl.ms < lease_ms {
                errors.at(
                    ttl.span,
                    format!(
                        "`ttl = \"{}\"` is shorter than {which} ({}): {WHY_TTL}; use a ttl of at least \"{}\"{}",
                        ttl.text,
                        spelled(lease_ms),
                        spelled(lease_ms),
                        if lease.is_none() {
                            ", or set a shorter lease"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        (Some(lease), None) if lease.ms > DEFAULT_TTL_MS => errors.at(
            lease.span,
            format!(
                "`lease = \"{}\"` is longer than the default ttl ({}): {WHY_TTL}; add a ttl at least as long as the lease, e.g. `ttl = \"{}\"`",
                lease.text,
                spelled(DEFAULT_TTL_MS),
                lease.text
            ),
        ),
        (_, None) => {}
    }
    if let Some(OnBusy::Wait(wait)) = on_busy
        && wait.ms < MIN_WAIT_MS
    {
        errors.at(
            wait.span,
            format!(
                "`on_busy = \"wait({})\"` is too short: a waiting duplicate looks again only after a 5 ms pause and a round trip to the store, so it would give up before its second look; use at least `wait({})`, or `on_busy = \"reject\"`",
                wait.text,
                spelled(MIN_WAIT_MS)
            ),
        );
    }
}

/// Parses `text` (written in `lit`) as a positive duration with millisecond resolution.
pub(crate) fn duration(
    lit: &LitStr,
    text: &str,
    zero_message: &str,
    errors: &mut Errors,
) -> Option<Millis> {
    let span = lit.span();
    match humantime::parse_duration(text.trim()) {
        Err(error) => {
            errors.at(
                span,
                format!("`{text}` is not a duration: {error}; write e.g. \"30s\" or \"500ms\""),
            );
            None
        }
        Ok(duration) if duration.is_zero() => {
            errors.at(span, zero_message);
            None
        }
        Ok(duration) => match u64::try_from(duration.as_millis()) {
            Ok(0) => {
                errors.at(
                    span,
                    format!(
                        "`{text}` is shorter than a millisecond, the finest resolution; write at least \"1ms\""
                    ),
                );
                None
            }
            Ok(ms) => Some(Millis {
                ms,
                text: text.trim().to_owned(),
                span,
            }),
            Err(_) => {
                errors.at(
                    span,
                    format!("`{text}` is too long; write e.g. \"30s\" or \"24h\""),
                );
                None
            }
        },
    }
}

/// A table/column/constraint name: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters.
pub(crate) fn sql_ident(lit: &LitStr, option: OptionName, errors: &mut Errors) -> Option<SqlIdent> {
    let name = lit.value();
    if is_sql_ident(&name) {
        return Some(SqlIdent {
            name,
            span: lit.span(),
        });
    }
    errors.at(
        lit.span(),
        format!(
            "`{name}` is not a plain SQL identifier; `{}` takes letters, digits and `_`, starting with a letter or `_`, at most 63 characters (e.g. {} = \"{}\")",
            option.as_str(),
            option.as_str(),
            example(option),
        ),
    );
    None
}

/// Whether `name` is a plain SQL identifier (safe to splice into SQL unquoted).
pub(crate) fn is_sql_ident(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A path option (`crate`, `on_duplicate`), re-spanned to its literal.
pub(crate) fn parse_path_option(
    lit: &LitStr,
    example: &str,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let text = lit.value();
    let parsed = syn::parse_str::<TokenStream>(text.trim())
        .and_then(|tokens| syn::parse2::<syn::Path>(respan(tokens, lit.span())));
    match parsed {
        Ok(path) => Some(path.to_token_stream()),
        Err(_) => {
            errors.at(
                lit.span(),
                format!("`{text}` is not a path; write e.g. {example}"),
            );
            None
        }
    }
}

/// The option's string literal, or an error saying what to write.
pub(crate) fn expect_str<'a>(option: &'a RawOption, errors: &mut Errors) -> Option<&'a LitStr> {
    match option.value.as_ref()? {
        RawValue::Str(lit) => Some(lit),
        other => {
            let name = option.name.as_str();
            errors.at(
                other.span(),
                format!(
                    "option `{name}` takes a string, e.g. {name} = \"{}\"",
                    example(option.name)
                ),
            );
            None
        }
    }
}

/// An example value for option `name`, for error messages.
pub(crate) fn example(name: OptionName) -> &'static str {
    match name {
        OptionName::Strategy => "dedup_table",
        OptionName::Key | OptionName::Fingerprint => "order.code",
        OptionName::Store => "self.db",
        OptionName::Scope => "ctx.tenant_id",
        OptionName::Name => "orders.place",
        OptionName::Lease => "30s",
        OptionName::Ttl => "24h",
        OptionName::Crate => "::idempotent_runtime",
        OptionName::Table => "orders",
        OptionName::Column => "code",
        OptionName::Version => "order.version",
        OptionName::StatusColumn => "status",
        OptionName::From => "PAID",
        OptionName::To => "SHIPPED",
        OptionName::Done => "DELIVERED",
        OptionName::Constraint => "orders_code_key",
        OptionName::OnBusy => "wait(5s)",
        OptionName::OnCancel => "release",
        OptionName::OnDuplicate => "Self::on_duplicate",
        OptionName::Terminal => "AppError::is_terminal",
    }
}

/// `column` default: the key's last field (`order.code` → `code`).
fn default_column(key: &[PathExpr], errors: &mut Errors) -> Option<SqlIdent> {
    let derived = match key {
        [part] => part.last_field.as_ref().map(|field| (field, part.span)),
        _ => None,
    };
    match derived {
        Some((field, span)) if is_sql_ident(&field.unraw_string()) => Some(SqlIdent {
            name: field.unraw_string(),
            span,
        }),
        _ => {
            let text: Vec<&str> = key.iter().map(|k| k.text.as_str()).collect();
            errors.at(
                key.first().map_or_else(Span::call_site, |part| part.span),
                format!(
                    "no `column`: the key `{}` does not end in a single field name to use as the column; add column = \"...\" naming the key column of `table`",
                    text.join("`, `")
                ),
            );
            None
        }
    }
}

/// `version` default: the key root's `version` field (`order.code` → `order.version`).
pub(crate) fn default_version(key: &[PathExpr], errors: &mut Errors) -> Option<PathExpr> {
    let root = &key.first()?.root;
    if key.iter().all(|part| part.root == *root) && root != "self" {
        let span = key[0].span;
        let version = Ident::new("version", field_span(span));
        return Some(PathExpr {
            tokens: quote_spanned!(span=> #root.#version),
            span,
            text: format!("{}.version", root.unraw_string()),
            root: root.clone(),
            last_field: Some(version),
        });
    }
    errors.at(
        key.first().map_or_else(Span::call_site, |part| part.span),
        "no `version`: the key has no single root parameter to read `.version` from; add version = \"...\" giving the version the caller read (e.g. version = \"order.version\")",
    );
    None
}

/// The key's columns for the business table: `column` for a one-part key; without it the
/// key's last field (`order.code` → `code`) when `single_default`, and each part's last field
/// for a compound key.
pub(crate) fn key_columns(
    key: &[PathExpr],
    column: Option<SqlIdent>,
    column_given: bool,
    single_default: bool,
    errors: &mut Errors,
) -> Option<Vec<SqlIdent>> {
    match (column, key) {
        (Some(column), [_]) => Some(vec![column]),
        (Some(column), _) => {
            errors.at(
                column.span,
                format!(
                    "`column` names one column but the key has {} parts; leave `column` out to use each part's last field as its column",
                    key.len()
                ),
            );
            None
        }
        // A malformed `column`: already reported.
        (None, _) if column_given => None,
        (None, [_]) if single_default => default_column(key, errors).map(|column| vec![column]),
        (None, _) => {
            let mut columns = Vec::new();
            for part in key {
                match part.last_field.as_ref().map(|f| f.unraw_string()) {
                    Some(name) if is_sql_ident(&name) => columns.push(SqlIdent {
                        name,
                        span: part.span,
                    }),
                    _ => errors.at(
                        part.span,
                        format!(
                            "key part `{}` does not end in a field name to use as its column; add column = \"...\"",
                            part.text
                        ),
                    ),
                }
            }
            (columns.len() == key.len()).then_some(columns)
        }
    }
}
