//! Stage 2: raw options + the function → a validated [`Config`].
//!
//! Every check runs even after an earlier one failed, so that one compile shows
//! every problem, each at the token it is about. Checks that would only repeat
//! an earlier problem (an option that failed to parse, a strategy that is
//! unknown) are skipped rather than cascading.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::{
    Expr, FnArg, GenericArgument, Ident, ItemFn, LitStr, Member, Pat, PathArguments, ReturnType,
    Token, Type, UnOp,
};

use crate::diag::{Errors, did_you_mean};
use crate::parse::{OptionName, RawArgs, RawOption, RawValue};

/// Declares [`Strategy`] with its spelling in the attribute.
macro_rules! strategies {
    ($($variant:ident => $text:literal,)*) => {
        /// One of the eight idempotency strategies (DESIGN.md §3).
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub(crate) enum Strategy {
            $(
                #[doc = concat!("`strategy = \"", $text, "\"`")]
                $variant,
            )*
        }

        impl Strategy {
            /// Every strategy, in the documentation's order.
            pub(crate) const ALL: &'static [Strategy] = &[$(Strategy::$variant,)*];

            /// The strategy as written in the attribute.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Strategy::$variant => $text,)*
                }
            }

            /// The strategy spelled `text`, if there is one.
            pub(crate) fn from_name(text: &str) -> Option<Strategy> {
                match text {
                    $($text => Some(Strategy::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

strategies! {
    SelectBeforeInsert => "select_before_insert",
    Pessimistic => "pessimistic",
    Optimistic => "optimistic",
    UniqueIndex => "unique_index",
    DedupTable => "dedup_table",
    StateMachine => "state_machine",
    DistributedLock => "distributed_lock",
    Token => "token",
}

impl Strategy {
    /// `strategies` as a comma-separated list of names.
    fn list(strategies: &[Strategy]) -> String {
        strategies
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the strategy runs on a SQL connection it can hand to `#[tx]`.
    pub(crate) fn is_sql(self) -> bool {
        !matches!(self, Strategy::DistributedLock | Strategy::Token)
    }

    /// Whether the strategy works on a business table (`table`, `column`).
    fn uses_business_table(self) -> bool {
        matches!(
            self,
            Strategy::SelectBeforeInsert
                | Strategy::Pessimistic
                | Strategy::Optimistic
                | Strategy::StateMachine
                | Strategy::UniqueIndex
        )
    }

    /// Whether option `option` means anything to this strategy.
    pub(crate) fn accepts(self, option: OptionName) -> bool {
        use Strategy as S;
        match option {
            OptionName::Strategy | OptionName::Key | OptionName::Store | OptionName::Crate => true,
            // The business-table strategies store no record: no operation name, scope or
            // fingerprint takes part (the key is the row's key).
            OptionName::Scope | OptionName::Name | OptionName::Fingerprint => {
                !self.uses_business_table()
            }
            OptionName::Lease | OptionName::Ttl => {
                matches!(self, S::DedupTable | S::DistributedLock | S::Token)
            }
            OptionName::OnBusy => matches!(self, S::DedupTable | S::DistributedLock),
            OptionName::Table | OptionName::Column => self.uses_business_table(),
            OptionName::Version => self == S::Optimistic,
            OptionName::StatusColumn | OptionName::From | OptionName::To => self == S::StateMachine,
            OptionName::Constraint => self == S::UniqueIndex,
            OptionName::OnDuplicate => matches!(
                self,
                S::SelectBeforeInsert | S::UniqueIndex | S::Optimistic | S::StateMachine
            ),
        }
    }
}

/// An expression from the attribute (`key`, `scope`, `store`, `version`,
/// `fingerprint` entries), parsed and re-spanned to its string literal.
pub(crate) struct PathExpr {
    /// The expression's tokens, every one spanned at the literal.
    pub(crate) tokens: TokenStream,
    /// The literal's span (or the attribute's, for a default).
    pub(crate) span: Span,
    /// The expression as the user wrote it, trimmed.
    pub(crate) text: String,
    /// The parameter (or `self`) the expression starts from.
    pub(crate) root: Ident,
    /// The last named field (`order.code` → `code`), if the expression ends in one.
    pub(crate) last_field: Option<Ident>,
}

/// A duration from the attribute, in whole milliseconds.
pub(crate) struct Millis {
    /// The duration in milliseconds, at least 1.
    pub(crate) ms: u64,
    /// Where it was written.
    pub(crate) span: Span,
}

/// What a concurrent duplicate gets (`on_busy`).
pub(crate) enum OnBusy {
    /// `"reject"`: `Error::InProgress` at once.
    Reject(Span),
    /// `"wait(5s)"`: wait up to this long for the first call to finish.
    Wait(Millis),
}

/// A table, column or constraint name, checked to be a plain SQL identifier.
pub(crate) struct SqlIdent {
    /// The identifier.
    pub(crate) name: String,
    /// Where it was written (or derived from).
    pub(crate) span: Span,
}

/// How the wrapper borrows the store for the runtime.
pub(crate) enum StoreKind {
    /// A parameter of type `&T`: pass `&*param`.
    Reborrow,
    /// A parameter of type `&mut T`: pass `&mut *param`.
    ReborrowMut,
    /// Anything else: pass `&(expr)`.
    Borrow,
}

/// The backend expression (`store`).
pub(crate) struct Store {
    /// The expression's tokens.
    pub(crate) tokens: TokenStream,
    /// Where it was written (or the parameter it defaulted to).
    pub(crate) span: Span,
    /// How to borrow it.
    pub(crate) kind: StoreKind,
}

/// One fingerprinted argument.
pub(crate) struct FingerprintArg {
    /// The label stored in the canonical form (the expression's text).
    pub(crate) label: String,
    /// The expression's tokens.
    pub(crate) tokens: TokenStream,
    /// Where it was written (the parameter, or the `fingerprint` entry).
    pub(crate) span: Span,
}

/// Which arguments identify the request (`fingerprint`).
pub(crate) enum Fingerprint {
    /// `fingerprint = false`.
    Disabled(Span),
    /// The listed (or default) arguments.
    Args(Vec<FingerprintArg>),
}

/// Which injected-parameter attribute a parameter carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum InjectKind {
    /// `#[tx]`: the open transaction.
    Tx,
    /// `#[fence]`: the fencing token.
    Fence,
}

impl InjectKind {
    /// The attribute's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InjectKind::Tx => "tx",
            InjectKind::Fence => "fence",
        }
    }

    /// The kind marked by `attr`, if it is `#[tx]` or `#[fence]` (with or
    /// without arguments).
    pub(crate) fn of(attr: &syn::Attribute) -> Option<InjectKind> {
        let path = attr.path();
        if path.is_ident("tx") {
            Some(InjectKind::Tx)
        } else if path.is_ident("fence") {
            Some(InjectKind::Fence)
        } else {
            None
        }
    }
}

/// A parameter the wrapper supplies itself (`#[tx]`, `#[fence]`); it is
/// removed from the public signature.
pub(crate) struct Injected {
    /// Its position in the signature's inputs.
    pub(crate) index: usize,
    /// The `#[tx]` / `#[fence]` attribute (for error spans).
    pub(crate) attr: syn::Attribute,
    /// `mut` in `mut tx: ...`.
    pub(crate) mutability: Option<Token![mut]>,
    /// The parameter's name.
    pub(crate) ident: Ident,
    /// The parameter's type.
    pub(crate) ty: Type,
}

/// A fully checked `#[idempotent(...)]`: everything the expansion needs, with
/// defaults filled in.
pub(crate) struct Config {
    /// The strategy.
    pub(crate) strategy: Strategy,
    /// The `strategy` literal.
    pub(crate) strategy_span: Span,
    /// Path of the runtime crate (`::idempotent_runtime` or `crate = "..."`).
    pub(crate) runtime: TokenStream,
    /// Expression for the operation name (a literal or `concat!(module_path!(), ...)`).
    pub(crate) name: TokenStream,
    /// The key parts, in order (at least one).
    pub(crate) key: Vec<PathExpr>,
    /// The caller/tenant part of the storage key.
    pub(crate) scope: Option<PathExpr>,
    /// The backend.
    pub(crate) store: Store,
    /// Which arguments identify the request.
    pub(crate) fingerprint: Fingerprint,
    /// Claim/lock lease, when given.
    pub(crate) lease: Option<Millis>,
    /// Record/token retention, when given.
    pub(crate) ttl: Option<Millis>,
    /// Concurrent-duplicate policy, when given.
    pub(crate) on_busy: Option<OnBusy>,
    /// Business table (table-based strategies; required except for unique_index).
    pub(crate) table: Option<SqlIdent>,
    /// Key column (given or derived from the key's last field).
    pub(crate) column: Option<SqlIdent>,
    /// Expected version (optimistic; given or `<key root>.version`).
    pub(crate) version: Option<PathExpr>,
    /// Status column (state_machine).
    pub(crate) status_column: Option<SqlIdent>,
    /// State before the transition (state_machine).
    pub(crate) from: Option<LitStr>,
    /// State after the transition (state_machine).
    pub(crate) to: Option<LitStr>,
    /// Unique index whose violation means duplicate (unique_index).
    pub(crate) constraint: Option<SqlIdent>,
    /// Function called for a duplicate instead of returning `Error::Duplicate`.
    pub(crate) on_duplicate: Option<TokenStream>,
    /// The `#[tx]` parameter.
    pub(crate) tx: Option<Injected>,
    /// The `#[fence]` parameter.
    pub(crate) fence: Option<Injected>,
    /// `T` of the return type `Result<T, E>`, when it can be named in a
    /// turbofish (for the replayability assertion).
    pub(crate) ok_type: Option<Type>,
    /// Where bounds on the function's error type are reported: `E` of `Result<T, E>`, or the
    /// return type when it names no `E` (`io::Result<T>`).
    pub(crate) err_span: Span,
}

/// The most key parts a business-table strategy binds (the runtime's `KeyValues` tuples).
const MAX_BUSINESS_KEY_PARTS: usize = 4;

/// Checks `args` against `func` and returns the configuration, or every
/// problem found (together with the ones already in `errors`).
pub(crate) fn validate(args: &RawArgs, func: &ItemFn, mut errors: Errors) -> syn::Result<Config> {
    let info = FnInfo::analyze(func, &mut errors);
    let strategy = check_strategy(args, &mut errors);

    if let Some((strategy, _)) = strategy {
        for option in &args.options {
            if !strategy.accepts(option.name) {
                let users: Vec<Strategy> = Strategy::ALL
                    .iter()
                    .copied()
                    .filter(|s| s.accepts(option.name))
                    .collect();
                errors.at(
                    option.ident.span(),
                    format!(
                        "option `{}` is not used by strategy `{}`; it applies to: {}",
                        option.name.as_str(),
                        strategy.as_str(),
                        Strategy::list(&users),
                    ),
                );
            }
        }
        check_injected_for_strategy(strategy, &info, &mut errors);
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

    let name = match usable(OptionName::Name).and_then(|o| expect_str(o, &mut errors)) {
        Some(lit) if lit.value().trim().is_empty() => {
            errors.at(
                lit.span(),
                "`name` is empty; write a stable operation name such as \"orders.place\"",
            );
            None
        }
        Some(lit) => Some(lit.to_token_stream()),
        None => None,
    };
    let name = name.unwrap_or_else(|| {
        let fn_name = func.sig.ident.unraw_string();
        if info.has_self {
            // Methods: `module::Type::method`, so two types' same-named methods in one module
            // never share records. The type's last path segment (generics dropped) keeps the
            // name independent of how rustc spells the full path.
            quote!(&*::std::format!(
                "{}::{}::{}",
                ::core::module_path!(),
                {
                    let full = ::core::any::type_name::<Self>();
                    let base = full.split('<').next().unwrap_or(full);
                    base.rsplit("::").next().unwrap_or(base)
                },
                #fn_name
            ))
        } else {
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    });

    let key = check_key(args, &info, &mut errors);
    if let (Some((strategy, _)), Some(key)) = (strategy, &key)
        && strategy.uses_business_table()
        && let Some(fifth) = key.get(MAX_BUSINESS_KEY_PARTS)
    {
        errors.at(
            fifth.span,
            format!(
                "strategy `{}` compares at most {MAX_BUSINESS_KEY_PARTS} key parts with their columns; this is part {}",
                strategy.as_str(),
                MAX_BUSINESS_KEY_PARTS + 1
            ),
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

    let fingerprint =
        check_fingerprint(usable(OptionName::Fingerprint), &info, &store, &mut errors);

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

    let sql = |name: OptionName, errors: &mut Errors| {
        usable(name)
            .and_then(|o| expect_str(o, errors))
            .and_then(|lit| sql_ident(lit, name, errors))
    };
    let table = sql(OptionName::Table, &mut errors);
    let mut column = sql(OptionName::Column, &mut errors);
    let status_column = sql(OptionName::StatusColumn, &mut errors);
    let constraint = sql(OptionName::Constraint, &mut errors);
    let mut version = usable(OptionName::Version)
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
    let on_duplicate = usable(OptionName::OnDuplicate)
        .and_then(|o| expect_str(o, &mut errors))
        .and_then(|lit| {
            parse_path_option(lit, "on_duplicate = \"Self::on_duplicate\"", &mut errors)
        });

    // Strategy-specific required options and defaults (DESIGN.md §2).
    if let Some((strategy, strategy_span)) = strategy {
        let needs_table = strategy.uses_business_table() && strategy != Strategy::UniqueIndex;
        let given = |name: OptionName| args.get(name).is_some();
        if needs_table && table.is_none() && !given(OptionName::Table) {
            errors.at(
                strategy_span,
                format!(
                    "strategy `{}` needs `table`: add table = \"...\" naming the business table the key lives in",
                    strategy.as_str()
                ),
            );
        }
        // A compound key without `column` uses each part's last field (checked in expand).
        if needs_table
            && column.is_none()
            && !given(OptionName::Column)
            && let Some(key) = &key
            && key.len() == 1
        {
            column = default_column(key, &mut errors);
        }
        if strategy == Strategy::Optimistic
            && version.is_none()
            && !given(OptionName::Version)
            && let Some(key) = &key
        {
            version = default_version(key, &mut errors);
        }
        if strategy == Strategy::StateMachine {
            for (name, present) in [
                (OptionName::StatusColumn, status_column.is_some()),
                (OptionName::From, from.is_some()),
                (OptionName::To, to.is_some()),
            ] {
                if !present && !given(name) {
                    errors.at(
                        strategy_span,
                        format!(
                            "strategy `state_machine` needs `{0}`: add {0} = \"...\" (e.g. status_column = \"status\", from = \"PAID\", to = \"SHIPPED\")",
                            name.as_str()
                        ),
                    );
                }
            }
        }
    }

    errors.finish()?;

    // All errors are reported above; reaching this point means each required
    // piece is present.
    let (Some((strategy, strategy_span)), Some(key), Some(store), Some(fingerprint)) =
        (strategy, key, store, fingerprint)
    else {
        return Err(syn::Error::new(
            Span::call_site(),
            "internal error in #[idempotent]: incomplete configuration without a reported error",
        ));
    };
    Ok(Config {
        strategy,
        strategy_span,
        runtime,
        name,
        key,
        scope,
        store,
        fingerprint,
        lease,
        ttl,
        on_busy,
        table,
        column,
        version,
        status_column,
        from,
        to,
        constraint,
        on_duplicate,
        tx: info.tx,
        fence: info.fence,
        ok_type: info.ok_type,
        err_span: info.err_span,
    })
}

/// `::idempotent_runtime`.
fn default_runtime() -> TokenStream {
    quote!(::idempotent_runtime)
}

/// `strategy = "..."`: required, one of [`Strategy::ALL`].
fn check_strategy(args: &RawArgs, errors: &mut Errors) -> Option<(Strategy, Span)> {
    let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
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
fn check_key(args: &RawArgs, info: &FnInfo, errors: &mut Errors) -> Option<Vec<PathExpr>> {
    let Some(option) = args.get(OptionName::Key) else {
        errors.at(
            Span::call_site(),
            format!(
                "missing `key`: add key = \"...\", a path rooted at a parameter that identifies the request (e.g. key = \"{}\")",
                info.example_path()
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
fn check_scope_not_key(scope: &PathExpr, key: &[PathExpr], errors: &mut Errors) -> bool {
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
fn check_store(option: Option<&RawOption>, info: &FnInfo, errors: &mut Errors) -> Option<Store> {
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
            && ["db", "pool", "store"].iter().any(|n| ident == n)
        {
            return Some(Store {
                tokens: ident.to_token_stream(),
                span: ident.span(),
                kind: reference_kind(&param.ty),
            });
        }
    }
    if info.has_self {
        let span = Span::call_site();
        return Some(Store {
            tokens: quote_spanned!(span=> self.db),
            span,
            kind: StoreKind::Borrow,
        });
    }
    errors.at(
        Span::call_site(),
        "no `store`: add `store = \"...\"` naming the backend (e.g. store = \"pool\")",
    );
    None
}

/// `fingerprint = false | "a" | ["a", "b"]` or its default (every parameter
/// except `self`, the store's root and injected ones).
fn check_fingerprint(
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
                });
            }
            None => ok = false,
        }
    }
    ok.then_some(Fingerprint::Args(args))
}

/// `#[tx]` only on SQL strategies, `#[fence]` only on distributed_lock.
fn check_injected_for_strategy(strategy: Strategy, info: &FnInfo, errors: &mut Errors) {
    if let Some(tx) = &info.tx
        && !strategy.is_sql()
    {
        let sql: Vec<Strategy> = Strategy::ALL
            .iter()
            .copied()
            .filter(|s| s.is_sql())
            .collect();
        errors.push(syn::Error::new_spanned(
            &tx.attr,
            format!(
                "`#[tx]` needs a SQL strategy ({}); strategy `{}` has no transaction to inject",
                Strategy::list(&sql),
                strategy.as_str()
            ),
        ));
    }
    if let Some(fence) = &info.fence
        && strategy != Strategy::DistributedLock
    {
        errors.push(syn::Error::new_spanned(
            &fence.attr,
            format!(
                "`#[fence]` needs a lock-based strategy (distributed_lock); strategy `{}` issues no fencing token",
                strategy.as_str()
            ),
        ));
    }
}

/// `on_busy = "reject" | "wait(5s)"`.
fn check_on_busy(lit: &LitStr, errors: &mut Errors) -> Option<OnBusy> {
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

/// Parses `text` (written in `lit`) as a positive duration with millisecond resolution.
fn duration(lit: &LitStr, text: &str, zero_message: &str, errors: &mut Errors) -> Option<Millis> {
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
            Ok(ms) => Some(Millis { ms, span }),
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
fn sql_ident(lit: &LitStr, option: OptionName, errors: &mut Errors) -> Option<SqlIdent> {
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
fn parse_path_option(lit: &LitStr, example: &str, errors: &mut Errors) -> Option<TokenStream> {
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
fn expect_str<'a>(option: &'a RawOption, errors: &mut Errors) -> Option<&'a LitStr> {
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
fn example(name: OptionName) -> &'static str {
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
        OptionName::Constraint => "orders_code_key",
        OptionName::OnBusy => "wait(5s)",
        OptionName::OnDuplicate => "Self::on_duplicate",
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
fn default_version(key: &[PathExpr], errors: &mut Errors) -> Option<PathExpr> {
    let root = &key.first()?.root;
    if key.iter().all(|part| part.root == *root) && root != "self" {
        let span = key[0].span;
        let version = Ident::new("version", span);
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

/// `&T` → reborrow, `&mut T` → mutable reborrow, else borrow.
fn reference_kind(ty: &Type) -> StoreKind {
    match ty {
        Type::Reference(reference) if reference.mutability.is_some() => StoreKind::ReborrowMut,
        Type::Reference(_) => StoreKind::Reborrow,
        Type::Paren(inner) => reference_kind(&inner.elem),
        Type::Group(inner) => reference_kind(&inner.elem),
        _ => StoreKind::Borrow,
    }
}

/// Sets the span of every token in `tokens` (groups included) to `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                TokenTree::Group(new)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// The identifier an expression starts from: `order` in `order.items[0].code()`.
/// Field access, indexing, method calls, parentheses, `&`, `*` and `as` are
/// looked through; anything else has no root.
fn root_ident(expr: &Expr) -> Option<&Ident> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => path.path.get_ident(),
        Expr::Field(field) => root_ident(&field.base),
        Expr::Index(index) => root_ident(&index.expr),
        Expr::MethodCall(call) => root_ident(&call.receiver),
        Expr::Paren(paren) => root_ident(&paren.expr),
        Expr::Group(group) => root_ident(&group.expr),
        Expr::Reference(reference) => root_ident(&reference.expr),
        Expr::Unary(unary) if matches!(unary.op, UnOp::Deref(_)) => root_ident(&unary.expr),
        Expr::Cast(cast) => root_ident(&cast.expr),
        _ => None,
    }
}

/// [`root_ident`] of an expression held as tokens.
fn root_of_tokens(tokens: &TokenStream) -> Option<Ident> {
    let expr: Expr = syn::parse2(tokens.clone()).ok()?;
    root_ident(&expr).cloned()
}

/// The last named field of a field-access path (`order.code` → `code`; a bare
/// parameter is its own last field).
fn last_field(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Field(field) => match &field.member {
            Member::Named(ident) => Some(ident.clone()),
            Member::Unnamed(_) => None,
        },
        Expr::Path(path) => path.path.get_ident().filter(|i| *i != "self").cloned(),
        Expr::Paren(paren) => last_field(&paren.expr),
        Expr::Group(group) => last_field(&group.expr),
        _ => None,
    }
}

/// `ident` without an `r#` prefix, as a string.
trait UnrawString {
    /// The identifier's text without `r#`.
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        let text = self.to_string();
        match text.strip_prefix("r#") {
            Some(stripped) => stripped.to_owned(),
            None => text,
        }
    }
}

/// One typed parameter of the function.
struct Param {
    /// Every name the parameter's pattern binds (one for `name: Type`).
    bindings: Vec<Ident>,
    /// The name, when the pattern is a plain `name` / `mut name`.
    simple: Option<Ident>,
    /// The declared type.
    ty: Type,
    /// Whether it carries `#[tx]` / `#[fence]`.
    injected: Option<InjectKind>,
}

/// What the checks need to know about the annotated function.
struct FnInfo {
    /// Typed parameters in order (the receiver is not one).
    params: Vec<Param>,
    /// Whether the function is a method (has a `self` receiver).
    has_self: bool,
    /// The `#[tx]` parameter.
    tx: Option<Injected>,
    /// The `#[fence]` parameter.
    fence: Option<Injected>,
    /// `T` of `Result<T, E>`, when nameable.
    ok_type: Option<Type>,
    /// `E` of `Result<T, E>`, or the return type.
    err_span: Span,
}

impl FnInfo {
    /// Checks the function's shape (`async`, `Result` return, `#[tx]`/`#[fence]`
    /// use) and records its parameters.
    fn analyze(func: &ItemFn, errors: &mut Errors) -> FnInfo {
        let sig = &func.sig;
        if sig.asyncness.is_none() {
            errors.at(
                sig.fn_token.span,
                format!(
                    "`#[idempotent]` needs an `async fn`; write `async fn {}`",
                    sig.ident
                ),
            );
        }
        let ok_type = match &sig.output {
            ReturnType::Default => {
                errors.between(
                    sig.fn_token.span,
                    sig.paren_token.span.close(),
                    format!(
                        "`#[idempotent]` needs a function returning `Result<T, E>` with `E: From<idempotent_runtime::Error>`; add a return type, e.g. `async fn {}(...) -> Result<Order, AppError>`",
                        sig.ident
                    ),
                );
                None
            }
            ReturnType::Type(_, ty) => match result_ok_type(ty) {
                Ok(ok) => ok,
                Err(()) => {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "the return type must be written `Result<T, E>` (or through an alias named `Result`, like `io::Result<T>`) with `E: From<idempotent_runtime::Error>`, so that duplicates and backend failures can be returned",
                    ));
                    None
                }
            },
        };
        if let ReturnType::Type(_, ty) = &sig.output
            && mentions_impl(&ty.to_token_stream())
        {
            errors.push(syn::Error::new_spanned(
                ty,
                "the return type cannot contain `impl Trait`: the wrapper returns the body's result from a closure and, for replaying strategies, stores it; name the type",
            ));
        }
        for attr in &func.attrs {
            if attr
                .path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "idempotent")
            {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "`#[idempotent]` is applied twice: the outer wrapper's claim would make the inner one see every call as in progress; keep one attribute",
                ));
            }
        }

        let mut info = FnInfo {
            params: Vec::new(),
            has_self: false,
            tx: None,
            fence: None,
            ok_type,
            err_span: match &sig.output {
                ReturnType::Default => Span::call_site(),
                ReturnType::Type(_, ty) => {
                    result_err_span(ty).unwrap_or_else(|| syn::spanned::Spanned::span(ty))
                }
            },
        };
        for (index, arg) in sig.inputs.iter().enumerate() {
            match arg {
                FnArg::Receiver(receiver) => {
                    info.has_self = true;
                    for attr in &receiver.attrs {
                        if let Some(kind) = InjectKind::of(attr) {
                            errors.push(syn::Error::new_spanned(
                                attr,
                                format!(
                                    "`#[{}]` goes on a parameter of its own, not on `self`",
                                    kind.as_str()
                                ),
                            ));
                        }
                    }
                }
                FnArg::Typed(typed) => {
                    let injected = info.injected_kind(index, typed, errors);
                    let mut bindings = Vec::new();
                    collect_bindings(&typed.pat, &mut bindings);
                    let simple = match &*typed.pat {
                        Pat::Ident(pat) if pat.subpat.is_none() && pat.by_ref.is_none() => {
                            Some(pat.ident.clone())
                        }
                        _ => None,
                    };
                    info.params.push(Param {
                        bindings,
                        simple,
                        ty: (*typed.ty).clone(),
                        injected,
                    });
                }
            }
        }
        info
    }

    /// Reads `#[tx]` / `#[fence]` on one parameter, recording it in `self.tx`
    /// / `self.fence` and reporting misuse.
    fn injected_kind(
        &mut self,
        index: usize,
        typed: &syn::PatType,
        errors: &mut Errors,
    ) -> Option<InjectKind> {
        let mut found: Option<InjectKind> = None;
        for attr in &typed.attrs {
            let Some(kind) = InjectKind::of(attr) else {
                continue;
            };
            let name = kind.as_str();
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    format!("`#[{name}]` takes no arguments: write `#[{name}]`"),
                ));
            }
            if let Some(previous) = found {
                errors.push(syn::Error::new_spanned(
                    attr,
                    if previous == kind {
                        format!("`#[{name}]` is written twice on this parameter")
                    } else {
                        "a parameter cannot be both `#[tx]` and `#[fence]`".to_owned()
                    },
                ));
                continue;
            }
            found = Some(kind);
            let slot = match kind {
                InjectKind::Tx => &mut self.tx,
                InjectKind::Fence => &mut self.fence,
            };
            if slot.is_some() {
                errors.push(syn::Error::new_spanned(
                    attr,
                    match kind {
                        InjectKind::Tx => "`#[tx]` may appear only once: one parameter receives the transaction",
                        InjectKind::Fence => "`#[fence]` may appear only once: one parameter receives the fencing token",
                    },
                ));
                continue;
            }
            match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() && pat.by_ref.is_none() => {
                    *slot = Some(Injected {
                        index,
                        attr: attr.clone(),
                        mutability: pat.mutability,
                        ident: pat.ident.clone(),
                        ty: (*typed.ty).clone(),
                    });
                }
                other => errors.push(syn::Error::new_spanned(
                    other,
                    match kind {
                        InjectKind::Tx => "a `#[tx]` parameter must be a plain `name: Type`, e.g. `#[tx] tx: &mut PgConnection`",
                        InjectKind::Fence => "a `#[fence]` parameter must be a plain `name: Type`, e.g. `#[fence] fence: FencingToken`",
                    },
                )),
            }
        }
        found
    }

    /// The names an expression may start from: `self` in a method, then every
    /// non-injected parameter binding.
    fn roots(&self) -> Vec<String> {
        let mut roots = Vec::new();
        if self.has_self {
            roots.push("self".to_owned());
        }
        for param in &self.params {
            if param.injected.is_none() {
                roots.extend(param.bindings.iter().map(|b| b.unraw_string()));
            }
        }
        roots
    }

    /// A plausible example path for messages (`order.code` style).
    fn example_path(&self) -> String {
        match self.roots().into_iter().find(|r| r != "self") {
            Some(root) => format!("{root}.id"),
            None => "order.code".to_owned(),
        }
    }

    /// Parses `lit` as an expression rooted at a parameter (or `self` in a
    /// method), for option `option`.
    fn path_expr(&self, lit: &LitStr, option: OptionName, errors: &mut Errors) -> Option<PathExpr> {
        let value = lit.value();
        let text = value.trim();
        let roots = self.roots();
        let hint = if roots.is_empty() {
            "this function has no parameters to take it from; add one".to_owned()
        } else {
            format!("write a path rooted at one of: {}", roots.join(", "))
        };
        if text.is_empty() {
            errors.at(
                lit.span(),
                format!("`{}` is empty; {hint}", option.as_str()),
            );
            return None;
        }
        let parsed = syn::parse_str::<TokenStream>(text).and_then(|tokens| {
            let tokens = respan(tokens, lit.span());
            syn::parse2::<Expr>(tokens.clone()).map(|expr| (tokens, expr))
        });
        let (tokens, expr) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                errors.at(
                    lit.span(),
                    format!("`{text}` is not a valid Rust expression ({error}); {hint}"),
                );
                return None;
            }
        };
        let Some(root) = root_ident(&expr) else {
            errors.at(
                lit.span(),
                format!("`{text}` is not a path rooted at a parameter; {hint}"),
            );
            return None;
        };
        let root_text = root.unraw_string();
        if !roots.contains(&root_text) {
            let injected = self.params.iter().find_map(|p| {
                p.injected
                    .filter(|_| p.bindings.iter().any(|b| b.unraw_string() == root_text))
            });
            let message = match injected {
                Some(kind) => format!(
                    "`{root_text}` is supplied by the wrapper (`#[{}]`) and cannot be used in `{}`; {hint}",
                    kind.as_str(),
                    option.as_str()
                ),
                None => format!("`{root_text}` is not a parameter of this function; {hint}"),
            };
            errors.at(lit.span(), message);
            return None;
        }
        Some(PathExpr {
            last_field: last_field(&expr),
            root: root.clone(),
            tokens,
            span: lit.span(),
            text: text.to_owned(),
        })
    }

    /// How to borrow a store expression: a bare reference parameter is
    /// reborrowed, anything else borrowed.
    fn store_kind(&self, expr: &PathExpr) -> StoreKind {
        let mut trees = expr.tokens.clone().into_iter();
        let bare = matches!(
            (trees.next(), trees.next()),
            (Some(TokenTree::Ident(ident)), None) if ident == expr.root && ident != "self"
        );
        if !bare {
            return StoreKind::Borrow;
        }
        self.params
            .iter()
            .find(|p| p.simple.as_ref() == Some(&expr.root))
            .map_or(StoreKind::Borrow, |p| reference_kind(&p.ty))
    }
}

/// Every identifier bound by a parameter pattern.
fn collect_bindings(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(pat) => {
            out.push(pat.ident.clone());
            if let Some((_, sub)) = &pat.subpat {
                collect_bindings(sub, out);
            }
        }
        Pat::Or(pat) => {
            if let Some(first) = pat.cases.first() {
                collect_bindings(first, out);
            }
        }
        Pat::Paren(pat) => collect_bindings(&pat.pat, out),
        Pat::Reference(pat) => collect_bindings(&pat.pat, out),
        Pat::Type(pat) => collect_bindings(&pat.pat, out),
        Pat::Slice(pat) => pat.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::Tuple(pat) => pat.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::TupleStruct(pat) => pat.elems.iter().for_each(|p| collect_bindings(p, out)),
        Pat::Struct(pat) => pat
            .fields
            .iter()
            .for_each(|field| collect_bindings(&field.pat, out)),
        _ => {}
    }
}

/// For a return type whose last path segment is `Result`: `Ok(Some(T))` when
/// its first generic argument is a type that can be named in a turbofish,
/// `Ok(None)` when it cannot; `Err(())` when the type is not a `Result`.
fn result_ok_type(ty: &Type) -> Result<Option<Type>, ()> {
    match ty {
        Type::Paren(inner) => result_ok_type(&inner.elem),
        Type::Group(inner) => result_ok_type(&inner.elem),
        Type::Path(path) => {
            let last = path.path.segments.last().ok_or(())?;
            if last.ident != "Result" {
                return Err(());
            }
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return Ok(None);
            };
            match args.args.first() {
                Some(GenericArgument::Type(ok)) if !mentions_impl(&ok.to_token_stream()) => {
                    Ok(Some(ok.clone()))
                }
                _ => Ok(None),
            }
        }
        _ => Err(()),
    }
}

/// The span of `E` in a return type `Result<T, E>`, when it names one.
fn result_err_span(ty: &Type) -> Option<Span> {
    match ty {
        Type::Paren(inner) => result_err_span(&inner.elem),
        Type::Group(inner) => result_err_span(&inner.elem),
        Type::Path(path) => {
            let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
                return None;
            };
            match args.args.iter().nth(1)? {
                GenericArgument::Type(err) => Some(syn::spanned::Spanned::span(err)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether the tokens contain `impl` (an `impl Trait` cannot go in a turbofish).
pub(crate) fn mentions_impl(tokens: &TokenStream) -> bool {
    tokens.clone().into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => mentions_impl(&group.stream()),
        _ => false,
    })
}
