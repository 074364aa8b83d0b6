//! The validated configuration: what [`crate::validate`] produces and [`crate::expand`]
//! consumes. Every value here is already checked and every default filled in, and each
//! strategy family carries exactly the pieces its expansion needs, so expansion cannot fail.

use proc_macro2::{Span, TokenStream};
use syn::{Ident, LitStr, Token, Type};

/// An expression from the attribute (`key`, `scope`, `store`, `version`,
/// `fingerprint` entries), parsed and re-spanned to its string literal.
#[derive(Clone)]
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
    /// The duration as written (trimmed), for messages.
    pub(crate) text: String,
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

/// What a future dropped mid-body does with its claim (`on_cancel`).
pub(crate) enum OnCancel {
    /// `"keep"`: the claim stays until its lease ends.
    Keep(Span),
    /// `"release"`: the claim is released at once in the background.
    Release(Span),
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
    /// Whether it is an entry of `fingerprint = [...]` (else a parameter fingerprinted by
    /// default).
    pub(crate) listed: bool,
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
#[derive(Clone)]
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
    /// Path of the runtime crate (`::idempotent_runtime` or `crate = "..."`).
    pub(crate) runtime: TokenStream,
    /// The key parts, in order (at least one).
    pub(crate) key: Vec<PathExpr>,
    /// The backend.
    pub(crate) store: Store,
    /// Positions of the injected parameters, which leave the public signature.
    pub(crate) injected: Vec<usize>,
    /// `T` of the return type `Result<T, E>`, when it can be named in a
    /// turbofish (for the replayability assertion).
    pub(crate) ok_type: Option<Type>,
    /// Where bounds on the function's error type are reported: `E` of `Result<T, E>`, or the
    /// return type when it names no `E` (`io::Result<T>`).
    pub(crate) err_span: Span,
    /// The last token of that type (`Error` in `sqlx::Error`): checks of `E` run from
    /// `err_span` to here, so their errors cover the whole type.
    pub(crate) err_end: Span,
    /// What the strategy's family needs.
    pub(crate) family: Family,
}

/// The strategy, with the pieces its family's expansion needs.
pub(crate) enum Family {
    /// `dedup_table`, `distributed_lock`, `token`: a record that replays the response.
    Replaying(Replaying),
    /// The five business-table strategies: the body in the strategy's transaction.
    Business(Business),
}

/// A replaying strategy's configuration.
pub(crate) struct Replaying {
    /// Which strategy, and what it injects.
    pub(crate) mode: ReplayMode,
    /// Constant expression for the operation name (the `name` literal or
    /// `concat!(module_path!(), "::", "fn_name")`).
    pub(crate) name: TokenStream,
    /// The caller/tenant part of the storage key.
    pub(crate) scope: Option<PathExpr>,
    /// Which arguments identify the request.
    pub(crate) fingerprint: Fingerprint,
    /// Claim/lock lease, when given.
    pub(crate) lease: Option<Millis>,
    /// Record/token retention, when given.
    pub(crate) ttl: Option<Millis>,
    /// Concurrent-duplicate policy, when given.
    pub(crate) on_busy: Option<OnBusy>,
    /// Dropped-future policy, when given (claim mode only).
    pub(crate) on_cancel: Option<OnCancel>,
    /// `terminal = "path"`: the `fn(&E) -> bool` that calls a body error terminal (stored and
    /// replayed), re-spanned to its literal; `None`: every error releases the claim.
    pub(crate) terminal: Option<TokenStream>,
}

/// The replaying strategies.
pub(crate) enum ReplayMode {
    /// `dedup_table` without `#[tx]`: the claim is committed first, with a lease.
    DedupTable,
    /// `dedup_table` with `#[tx]`: the claim lives in the body's transaction.
    DedupTableInTx(Injected),
    /// `distributed_lock`, with its `#[fence]` parameter if any.
    DistributedLock(Option<Injected>),
    /// `token`: the single key part is the one-time token.
    Token(PathExpr),
}

/// A business-table strategy's configuration.
pub(crate) struct Business {
    /// Which strategy, with its table and options.
    pub(crate) rule: BusinessRule,
    /// The `#[tx]` parameter (required by every business-table strategy).
    pub(crate) tx: Injected,
    /// The function called for a duplicate instead of returning `Error::Duplicate`.
    pub(crate) on_duplicate: Option<OnDuplicate>,
}

/// `on_duplicate = "path"`, with the arguments it is called with.
pub(crate) struct OnDuplicate {
    /// The function's path, spanned at the literal.
    pub(crate) path: TokenStream,
    /// Every argument but the injected ones, by name (`self` included).
    pub(crate) args: Vec<TokenStream>,
}

/// The business table and the key's columns.
pub(crate) struct Target {
    /// The table.
    pub(crate) table: SqlIdent,
    /// One column per key part, in order.
    pub(crate) columns: Vec<SqlIdent>,
}

/// The business-table strategies.
pub(crate) enum BusinessRule {
    /// `select_before_insert`.
    SelectBeforeInsert(Target),
    /// `pessimistic`.
    Pessimistic(Target),
    /// `optimistic`, with the version the caller read.
    Optimistic {
        /// The table and key columns.
        target: Target,
        /// The expected version.
        version: PathExpr,
    },
    /// `unique_index`: at least one of `constraint` and `target`.
    UniqueIndex {
        /// The unique index whose violation means duplicate.
        constraint: Option<SqlIdent>,
        /// The key's row, confirmed to exist after a violation.
        target: Option<Target>,
    },
    /// `state_machine`.
    StateMachine {
        /// The table and key columns.
        target: Target,
        /// The status column.
        status_column: SqlIdent,
        /// The state before the transition.
        from: LitStr,
        /// The state after it.
        to: LitStr,
        /// `done`: further states that count as already applied (a duplicate), besides `to`;
        /// empty when not given.
        done: Vec<LitStr>,
    },
}
