//! The annotated function's signature: its parameters and receiver, the injected
//! `#[tx]`/`#[fence]` parameters, and the `T` and `E` of its `Result<T, E>`. [`FnInfo`] also
//! resolves the attribute's path expressions against the parameters.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens as _;
use syn::{
    Expr, FnArg, GenericArgument, Ident, ItemFn, LitStr, Pat, PathArguments, ReturnType, Type,
};

use crate::diag::Errors;
use crate::model::{InjectKind, Injected, PathExpr, StoreKind};
use crate::parse::OptionName;
use crate::syntax::{UnrawString as _, ends, last_field, mentions_impl, respan_expr, root_ident};

/// One typed parameter of the function.
pub(crate) struct Param {
    /// Every name the parameter's pattern binds (one for `name: Type`).
    pub(crate) bindings: Vec<Ident>,
    /// The name, when the pattern is a plain `name` / `mut name`.
    pub(crate) simple: Option<Ident>,
    /// The declared type.
    pub(crate) ty: Type,
    /// Whether it carries `#[tx]` / `#[fence]`.
    pub(crate) injected: Option<InjectKind>,
    /// The parameter as written (for error spans).
    pub(crate) written: syn::PatType,
}

/// What the checks need to know about the annotated function.
pub(crate) struct FnInfo {
    /// Typed parameters in order (the receiver is not one).
    pub(crate) params: Vec<Param>,
    /// Whether the function is a method (has a `self` receiver).
    pub(crate) has_self: bool,
    /// The `#[tx]` parameter.
    pub(crate) tx: Option<Injected>,
    /// Whether any parameter carries `#[tx]`, well-formed or not.
    pub(crate) tx_marked: bool,
    /// The `#[fence]` parameter.
    pub(crate) fence: Option<Injected>,
    /// `T` of `Result<T, E>`, when nameable.
    pub(crate) ok_type: Option<Type>,
    /// The first and last tokens of `E` of `Result<T, E>`, or of the return type.
    pub(crate) err_span: (Span, Span),
    /// The fields of `self` the body names (`self.db` → `db`), in order: what a missing
    /// `store` of a method may suggest.
    pub(crate) self_fields: Vec<String>,
}

impl FnInfo {
    /// Checks the function's shape (`async`, `Result` return, `#[tx]`/`#[fence]`
    /// use) and records its parameters.
    pub(crate) fn analyze(func: &ItemFn, errors: &mut Errors) -> FnInfo {
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
            tx_marked: false,
            fence: None,
            self_fields: Vec::new(),
            ok_type,
            err_span: match &sig.output {
                ReturnType::Default => (Span::call_site(), Span::call_site()),
                ReturnType::Type(_, ty) => {
                    ends(&result_err_type(ty).unwrap_or(ty).to_token_stream())
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
                        written: typed.clone(),
                    });
                }
            }
        }
        if info.has_self {
            self_fields(func.block.to_token_stream(), &mut info.self_fields);
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
            if kind == InjectKind::Tx {
                self.tx_marked = true;
            }
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
    pub(crate) fn roots(&self) -> Vec<String> {
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

    /// What to suggest for a missing `key`: a parameter that is neither the store (`store`'s
    /// root, a parameter named like the default store, one whose type is a pool or store), nor
    /// a connection, nor injected. A parameter named like an identifier (`request_id`,
    /// `idempotency_key`, `*id`, `*_key`, `token`) is the key itself; else a parameter of a
    /// struct-like type gives its field (`req.request_id`), else a plain value is the key.
    pub(crate) fn key_example(&self, store_root: Option<&str>) -> KeyExample {
        let candidates: Vec<(String, &Param)> = self
            .params
            .iter()
            .filter(|p| {
                p.injected.is_none()
                    && !is_store_type(&p.ty)
                    && !is_connection_type(&p.ty)
                    && connection_of(&p.ty).is_none()
            })
            .filter_map(|p| Some((p.simple.as_ref()?.unraw_string(), p)))
            .filter(|(name, _)| {
                Some(name.as_str()) != store_root
                    && (store_root.is_some() || !DEFAULT_STORE_NAMES.contains(&name.as_str()))
            })
            .collect();
        if let Some((name, _)) = candidates.iter().find(|(name, _)| is_id_like(name)) {
            return KeyExample::Param(name.clone());
        }
        if let Some((name, _)) = candidates.iter().find(|(_, p)| !is_plain_value(&p.ty)) {
            return KeyExample::Field(name.clone());
        }
        match candidates.first() {
            Some((name, _)) => KeyExample::Param(name.clone()),
            None => KeyExample::None,
        }
    }

    /// What to suggest for a missing `store`: the first parameter whose type is a pool or a
    /// store, else (in a method) a field of `self` the body uses whose name looks like a store's.
    pub(crate) fn store_example(&self) -> Option<String> {
        let param = self.params.iter().find_map(|p| {
            (p.injected.is_none() && is_store_type(&p.ty))
                .then(|| p.simple.as_ref().map(|name| name.unraw_string()))
                .flatten()
        });
        param.or_else(|| {
            self.self_fields
                .iter()
                .find(|field| is_store_like_name(field))
                .map(|field| format!("self.{field}"))
        })
    }

    /// Parses `lit` as an expression rooted at a parameter (or `self` in a
    /// method), for option `option`.
    pub(crate) fn path_expr(
        &self,
        lit: &LitStr,
        option: OptionName,
        errors: &mut Errors,
    ) -> Option<PathExpr> {
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
            let tokens = respan_expr(tokens, lit.span());
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

    /// The connection type of the store's database (`SqliteConnection` for a
    /// `pool: &SqlitePool` store), when the store is a parameter whose type names it.
    pub(crate) fn store_connection(&self, store: &TokenStream) -> Option<&'static str> {
        self.store_param(store).and_then(|p| connection_of(&p.ty))
    }

    /// The parameter the store is, when `store` is one bare parameter name.
    pub(crate) fn store_param(&self, store: &TokenStream) -> Option<&Param> {
        let mut trees = store.clone().into_iter();
        let (Some(TokenTree::Ident(ident)), None) = (trees.next(), trees.next()) else {
            return None;
        };
        self.params
            .iter()
            .find(|p| p.simple.as_ref() == Some(&ident))
    }

    /// How to borrow a store expression: a bare reference parameter is
    /// reborrowed, anything else borrowed.
    pub(crate) fn store_kind(&self, expr: &PathExpr) -> StoreKind {
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

/// An example for a missing `key` (see [`FnInfo::key_example`]).
pub(crate) enum KeyExample {
    /// The parameter itself identifies the request (`request_id`).
    Param(String),
    /// A field of this parameter does (`req` → `req.request_id`).
    Field(String),
    /// No parameter but the store, the connection or injected ones.
    None,
}

/// The parameter names the `store` default takes.
pub(crate) const DEFAULT_STORE_NAMES: [&str; 3] = ["db", "pool", "store"];

/// The last path segments of the types that are a store: sqlx pools, the runtime's stores and
/// the Redis connection manager (through `&`, `&mut`, `Arc`, `Rc` and `Box`).
const STORE_TYPES: [&str; 8] = [
    "Pool",
    "PgPool",
    "SqlitePool",
    "MySqlPool",
    "AnyPool",
    "RedisStore",
    "MemoryStore",
    "ConnectionManager",
];

/// Whether a type is a pool or store ([`STORE_TYPES`]), directly or in an `Arc`, `Rc` or `Box`.
pub(crate) fn is_store_type(ty: &Type) -> bool {
    type_name(ty).is_some_and(|(name, args)| {
        STORE_TYPES.contains(&name.as_str())
            || (matches!(name.as_str(), "Arc" | "Rc" | "Box")
                && args.iter().any(|arg| STORE_TYPES.contains(&arg.as_str())))
    })
}

/// The store type a type names (`MemoryStore` for `&Arc<MemoryStore>`), when it is one of the
/// runtime's stores that have no transaction (`MemoryStore`, `RedisStore`).
pub(crate) fn store_without_tx(ty: &Type) -> Option<&'static str> {
    let (name, args) = type_name(ty)?;
    let named = |name: &str| match name {
        "MemoryStore" => Some("MemoryStore"),
        "RedisStore" => Some("RedisStore"),
        _ => None,
    };
    named(&name).or_else(|| {
        matches!(name.as_str(), "Arc" | "Rc" | "Box")
            .then(|| args.iter().find_map(|arg| named(arg)))
            .flatten()
    })
}

/// A name that reads like a request's identifier: `id`, `*_id` (`request_id`), `uuid`, `key`,
/// `*_key` (`idempotency_key`), `token`, `*_token`.
fn is_id_like(name: &str) -> bool {
    let name = name.trim_start_matches('_').to_ascii_lowercase();
    ["id", "uuid", "key", "token"]
        .iter()
        .any(|word| name == *word || name.ends_with(&format!("_{word}")))
}

/// A field name that reads like a store's (`db`, `pool`, `read_pool`, `store`, `redis`, …).
fn is_store_like_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["db", "pool", "store", "redis", "database"]
        .iter()
        .any(|word| {
            name == *word
                || name.ends_with(&format!("_{word}"))
                || name.starts_with(&format!("{word}_"))
        })
}

/// A type whose value is one scalar or string (`u64`, `&str`, `String`, `Uuid`): a key by
/// itself, with no field to name.
fn is_plain_value(ty: &Type) -> bool {
    type_name(ty).is_some_and(|(name, _)| {
        matches!(
            name.as_str(),
            "str"
                | "String"
                | "Uuid"
                | "u8"
                | "u16"
                | "u32"
                | "u64"
                | "u128"
                | "usize"
                | "i8"
                | "i16"
                | "i32"
                | "i64"
                | "i128"
                | "isize"
                | "bool"
                | "char"
        )
    })
}

/// The fields of `self` a body names (`self.db` → `db`), each once, in order.
fn self_fields(tokens: TokenStream, out: &mut Vec<String>) {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    for (index, tree) in trees.iter().enumerate() {
        match tree {
            TokenTree::Group(group) => self_fields(group.stream(), out),
            TokenTree::Ident(ident) if ident == "self" => {
                if let (Some(TokenTree::Punct(dot)), Some(TokenTree::Ident(field))) =
                    (trees.get(index + 1), trees.get(index + 2))
                    && dot.as_char() == '.'
                {
                    let field = field.unraw_string();
                    if !out.contains(&field) {
                        out.push(field);
                    }
                }
            }
            _ => {}
        }
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

/// `E` in a return type `Result<T, E>`, when it names one.
fn result_err_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Paren(inner) => result_err_type(&inner.elem),
        Type::Group(inner) => result_err_type(&inner.elem),
        Type::Path(path) => {
            let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
                return None;
            };
            match args.args.iter().nth(1)? {
                GenericArgument::Type(err) => Some(err),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `&T` → reborrow, `&mut T` → mutable reborrow, else borrow.
pub(crate) fn reference_kind(ty: &Type) -> StoreKind {
    match ty {
        Type::Reference(reference) if reference.mutability.is_some() => StoreKind::ReborrowMut,
        Type::Reference(_) => StoreKind::Reborrow,
        Type::Paren(inner) => reference_kind(&inner.elem),
        Type::Group(inner) => reference_kind(&inner.elem),
        _ => StoreKind::Borrow,
    }
}

/// The type's last path segment and its generic type arguments' last segments, references,
/// parentheses and groups looked through: `&mut sqlx::Transaction<'_, Sqlite>` →
/// (`Transaction`, [`Sqlite`]).
fn type_name(ty: &Type) -> Option<(String, Vec<String>)> {
    match ty {
        Type::Reference(inner) => type_name(&inner.elem),
        Type::Paren(inner) => type_name(&inner.elem),
        Type::Group(inner) => type_name(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let args = match &last.arguments {
                PathArguments::AngleBracketed(args) => args
                    .args
                    .iter()
                    .filter_map(|arg| match arg {
                        GenericArgument::Type(ty) => type_name(ty).map(|(name, _)| name),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some((last.ident.to_string(), args))
        }
        _ => None,
    }
}

/// The sqlx connection type of the database a type names: `PgPool`, `&mut PgConnection`,
/// `Pool<Postgres>`, `Transaction<'_, Postgres>`, … → `PgConnection` (likewise `MySql…`,
/// `Sqlite…`).
pub(crate) fn connection_of(ty: &Type) -> Option<&'static str> {
    let (name, args) = type_name(ty)?;
    let database = |name: &str| match name {
        "PgConnection" | "PgPool" | "Postgres" => Some("PgConnection"),
        "MySqlConnection" | "MySqlPool" | "MySql" => Some("MySqlConnection"),
        "SqliteConnection" | "SqlitePool" | "Sqlite" => Some("SqliteConnection"),
        _ => None,
    };
    database(&name).or_else(|| {
        matches!(name.as_str(), "Pool" | "Transaction" | "PoolConnection")
            .then(|| args.iter().find_map(|arg| database(arg)))
            .flatten()
    })
}

/// Whether a parameter's type is a sqlx connection or transaction (`&mut PgConnection`,
/// `&mut Transaction<'_, Sqlite>`, `PoolConnection<MySql>`, …): what a `#[tx]` parameter
/// written without `#[tx]` looks like.
pub(crate) fn is_connection_type(ty: &Type) -> bool {
    type_name(ty).is_some_and(|(name, _)| {
        matches!(
            name.as_str(),
            "PgConnection"
                | "MySqlConnection"
                | "SqliteConnection"
                | "AnyConnection"
                | "Transaction"
                | "PoolConnection"
        )
    })
}
