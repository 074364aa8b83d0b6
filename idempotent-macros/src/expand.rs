//! Stage 3: a validated [`Config`] + the function → the wrapper's tokens.
//!
//! [`expand`] drives the three stages; below it there is one function per
//! strategy; every strategy generates code.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{AttrStyle, FnArg, Ident, ItemFn, LitStr, Pat, Signature};

use crate::diag::Errors;
use crate::parse;
use crate::validate::{
    self, Config, Fingerprint, InjectKind, Injected, Millis, OnBusy, Store, StoreKind, Strategy,
};

/// Expands `#[idempotent(attr)] item`.
///
/// Never fails: problems come back as `compile_error!`s next to the original
/// function (with its `#[tx]`/`#[fence]` markers removed), so the user sees
/// exactly the attribute's errors and no follow-on errors about a missing
/// function.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::parse_args(attr, &mut errors);
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(error) => return not_a_function(item, &error),
    };
    let expanded =
        validate::validate(&args, &func, errors).and_then(|config| expand_strategy(&config, &func));
    match expanded {
        Ok(tokens) => tokens,
        Err(error) => original_with_errors(func, &error),
    }
}

/// The item unchanged plus an error saying where the attribute goes.
fn not_a_function(item: TokenStream, error: &syn::Error) -> TokenStream {
    let trees: Vec<_> = item.clone().into_iter().collect();
    let is_fn = trees
        .iter()
        .any(|tree| matches!(tree, proc_macro2::TokenTree::Ident(ident) if ident == "fn"));
    let error = match trees.last() {
        Some(proc_macro2::TokenTree::Punct(semi)) if is_fn && semi.as_char() == ';' => {
            syn::Error::new(
                semi.span(),
                "`#[idempotent]` needs the function's body: put it on the `async fn` in the `impl` block, not on a declaration without a body",
            )
        }
        _ => syn::Error::new(
            error.span(),
            "`#[idempotent]` goes on an `async fn` with a body (a free function or a method in an `impl` block)",
        ),
    };
    let error = error.into_compile_error();
    quote!(#item #error)
}

/// The function as written followed by `error`'s `compile_error!`s, so that
/// the attribute's errors are all the user sees:
///
/// - the `#[tx]`/`#[fence]` markers (not real attributes) are removed;
/// - a plain `#[tx] tx: T` / `#[fence] fence: T` parameter leaves the signature,
///   as it would in the wrapper, so callers written against the wrapper's
///   signature get no arity errors; the body still sees it through a diverging
///   `let tx: T = unreachable!();`;
/// - parameters used only by the attribute (the store, say) would now look
///   unused, and the code after that `let` unreachable: those warnings are
///   silenced.
fn original_with_errors(func: ItemFn, error: &syn::Error) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
        ..
    } = func;
    let mut bindings = Vec::new();
    sig.inputs = std::mem::take(&mut sig.inputs)
        .into_iter()
        .filter(|arg| {
            let FnArg::Typed(typed) = arg else {
                return true;
            };
            let injected = typed.attrs.iter().any(|a| InjectKind::of(a).is_some());
            match &*typed.pat {
                Pat::Ident(pat)
                    if injected
                        && pat.subpat.is_none()
                        && pat.by_ref.is_none()
                        && !validate::mentions_impl(&typed.ty.to_token_stream()) =>
                {
                    let (mutability, ident, ty) = (&pat.mutability, &pat.ident, &typed.ty);
                    bindings.push(quote!(let #mutability #ident: #ty = ::core::unreachable!();));
                    false
                }
                _ => true,
            }
        })
        .collect();
    strip_injected_attrs(&mut sig);
    let outer = attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer));
    let inner = attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Inner(_)));
    let stmts = &block.stmts;
    let error = error.to_compile_error();
    quote! {
        #(#outer)*
        #[allow(unused_variables, unused_mut, unreachable_code)]
        #vis #sig {
            #(#inner)*
            #(#bindings)*
            #(#stmts)*
        }
        #error
    }
}

/// Removes `#[tx]` and `#[fence]` from every parameter of `sig`.
fn strip_injected_attrs(sig: &mut Signature) {
    for arg in &mut sig.inputs {
        let attrs = match arg {
            FnArg::Receiver(receiver) => &mut receiver.attrs,
            FnArg::Typed(typed) => &mut typed.attrs,
        };
        attrs.retain(|attr| InjectKind::of(attr).is_none());
    }
}

/// Dispatches to the strategy's expansion.
fn expand_strategy(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    match config.strategy {
        Strategy::SelectBeforeInsert => expand_select_before_insert(config, func),
        Strategy::Pessimistic => expand_pessimistic(config, func),
        Strategy::Optimistic => expand_optimistic(config, func),
        Strategy::UniqueIndex => expand_unique_index(config, func),
        Strategy::DedupTable => expand_dedup_table(config, func),
        Strategy::StateMachine => expand_state_machine(config, func),
        Strategy::DistributedLock => expand_distributed_lock(config, func),
        Strategy::Token => expand_token(config, func),
    }
}

/// `select_before_insert`: `SELECT 1` on the key's row, the body (the insert) only when absent,
/// in one transaction (`#[tx]`); the key's unique index catches the race.
fn expand_select_before_insert(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let parts = BusinessParts::new(config, func)?;
    let target = parts.target(config)?;
    let call = parts.call(
        config,
        quote!(select_before_insert::run),
        target,
        None,
        true,
    );
    Ok(wrapper(func, config, call))
}

/// `pessimistic`: `SELECT … FOR UPDATE` on the key's row (SQLite: `BEGIN IMMEDIATE`), the body
/// runs holding the lock on the same connection (`#[tx]`) and decides.
fn expand_pessimistic(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let parts = BusinessParts::new(config, func)?;
    let target = parts.target(config)?;
    let call = parts.call(config, quote!(pessimistic::run), target, None, false);
    Ok(wrapper(func, config, call))
}

/// `optimistic`: `UPDATE … SET version = version + 1 WHERE key AND version = expected` in the
/// body's transaction (`#[tx]`); no row → duplicate.
fn expand_optimistic(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let parts = BusinessParts::new(config, func)?;
    let target = parts.target(config)?;
    let version = match &config.version {
        Some(version) => {
            let (span, expr) = (version.span, &version.tokens);
            quote_spanned!(span=> &(#expr))
        }
        None => {
            return Err(syn::Error::new(
                config.strategy_span,
                "strategy `optimistic` needs `version`",
            ));
        }
    };
    let call = parts.call(config, quote!(optimistic::run), target, Some(version), true);
    Ok(wrapper(func, config, call))
}

/// `unique_index`: the body inserts in a transaction (`#[tx]`); a unique violation on the key's
/// index (by error kind, constraint name where reported, and the key's row existing) is a
/// duplicate.
fn expand_unique_index(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let rt = &config.runtime;
    let parts = BusinessParts::new(config, func)?;
    if config.constraint.is_none() && config.table.is_none() {
        return Err(syn::Error::new(
            config.strategy_span,
            "strategy `unique_index` needs `constraint` (the unique index on the key, e.g. constraint = \"orders_code_key\") or `table` (to confirm the key's row exists), or both: otherwise any unique violation would count as a duplicate",
        ));
    }
    let constraint = match &config.constraint {
        Some(c) => {
            let ident = sql_ident(config, c);
            quote!(::core::option::Option::Some(#ident))
        }
        None => quote!(::core::option::Option::None),
    };
    let target = match &config.table {
        Some(_) => {
            let target = parts.target(config)?;
            quote!(::core::option::Option::Some(#target))
        }
        None => quote!(::core::option::Option::None),
    };
    let options =
        quote!(#rt::__private::unique_index::Options { constraint: #constraint, target: #target });
    let call = parts.call(config, quote!(unique_index::run), options, None, true);
    Ok(wrapper(func, config, call))
}

/// `state_machine`: `UPDATE … SET status = to WHERE key AND status = from` in the body's
/// transaction (`#[tx]`); no row → duplicate, conflict or not found by the row's state.
fn expand_state_machine(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let rt = &config.runtime;
    let parts = BusinessParts::new(config, func)?;
    let target = parts.target(config)?;
    let (Some(status), Some(from), Some(to)) = (&config.status_column, &config.from, &config.to)
    else {
        return Err(syn::Error::new(
            config.strategy_span,
            "strategy `state_machine` needs `status_column`, `from` and `to`",
        ));
    };
    let status = sql_ident(config, status);
    let transition = quote! {
        #rt::__private::state_machine::Transition {
            target: #target,
            status_column: #status,
            from: #from,
            to: #to,
        }
    };
    let call = parts.call(config, quote!(state_machine::run), transition, None, true);
    Ok(wrapper(func, config, call))
}

/// The pieces every business-table expansion passes to its runtime entry point.
struct BusinessParts {
    /// The store argument (`&*pool`, `&mut *conn`, …).
    store: TokenStream,
    /// The key parts as a tuple of references: `(&(order.code),)`.
    key: TokenStream,
    /// Number of key parts.
    key_len: usize,
    /// Where the entry point's call and `.await` are spanned: the first key part, so that a
    /// key part the database cannot bind is reported once.
    key_span: Span,
    /// `error_kit()`, spanned at `E`: the one check of `E`'s bounds.
    kit: TokenStream,
    /// `async |tx: &mut Conn| -> Result<..> { BODY }`.
    body: TokenStream,
    /// `async || path(args).await`, or one returning `Error::Duplicate`.
    on_duplicate: TokenStream,
}

impl BusinessParts {
    /// Builds the shared pieces; the strategy must have a `#[tx]` parameter.
    fn new(config: &Config, func: &ItemFn) -> syn::Result<BusinessParts> {
        let rt = &config.runtime;
        let Some(tx) = &config.tx else {
            return Err(syn::Error::new(
                config.strategy_span,
                format!(
                    "strategy `{}` runs the body inside its own transaction: add a parameter `#[tx] tx: &mut PgConnection` (or `MySqlConnection`, `SqliteConnection`) and write through it",
                    config.strategy.as_str()
                ),
            ));
        };
        let parts = config.key.iter().map(|part| {
            let (span, expr) = (part.span, &part.tokens);
            quote_spanned!(span=> &(#expr),)
        });
        let key_span = config
            .key
            .first()
            .map_or_else(Span::call_site, |part| part.span);
        let key = quote_spanned!(key_span=> (#(#parts)*));
        let kit = {
            let span = config.err_span;
            let rt = validate::respan(rt.to_token_stream(), span);
            quote_spanned!(span=> #rt::__private::error_kit())
        };
        let (param, bind) = injected_binding(tx);
        let output = &func.sig.output;
        let block = &func.block;
        let body = quote!(|| async |#param| #output { #bind #block });
        let on_duplicate = match &config.on_duplicate {
            Some(path) => {
                let mut args = Vec::new();
                for (index, arg) in func.sig.inputs.iter().enumerate() {
                    if index == tx.index {
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
                                return Err(syn::Error::new_spanned(
                                    other,
                                    "`on_duplicate` passes every argument on by name: give this parameter a plain name (`name: Type`)",
                                ));
                            }
                        },
                    }
                }
                quote_spanned!(path.span()=> async || #path(#(#args),*).await)
            }
            None => {
                let into_error = into_error_fn(config);
                let duplicate = quote_spanned! {config.err_span=>
                    #into_error(#rt::__private::Error::Duplicate)
                };
                quote!(async || ::core::result::Result::Err(#duplicate))
            }
        };
        Ok(BusinessParts {
            store: store_through(config, "tx_store"),
            key,
            key_len: config.key.len(),
            key_span,
            kit,
            body,
            on_duplicate,
        })
    }

    /// `rt::__private::<entry>(store, before, key, [after,] kit, body, [on_duplicate]).await`,
    /// spanned at the key (see [`call_entry`]).
    fn call(
        &self,
        config: &Config,
        entry: TokenStream,
        before: TokenStream,
        after: Option<TokenStream>,
        on_duplicate: bool,
    ) -> TokenStream {
        let (store, key, kit, body) = (&self.store, &self.key, &self.kit, &self.body);
        let after = after.map(|after| quote!(#after,));
        let on_duplicate = on_duplicate.then_some(&self.on_duplicate);
        call_entry(
            config,
            self.key_span,
            entry,
            None,
            quote!(#store, #before, #key, #after #kit, #body, #on_duplicate),
        )
    }

    /// `Target { table, columns }`: `column`, or each key part's last field.
    fn target(&self, config: &Config) -> syn::Result<TokenStream> {
        let rt = &config.runtime;
        let Some(table) = &config.table else {
            return Err(syn::Error::new(
                config.strategy_span,
                format!("strategy `{}` needs `table`", config.strategy.as_str()),
            ));
        };
        let columns: Vec<TokenStream> = match &config.column {
            Some(column) if self.key_len == 1 => vec![sql_ident(config, column)],
            Some(column) => {
                return Err(syn::Error::new(
                    column.span,
                    format!(
                        "`column` names one column but the key has {} parts; leave `column` out to use each part's last field as its column",
                        self.key_len
                    ),
                ));
            }
            None => {
                let mut columns = Vec::new();
                for part in &config.key {
                    let name = part.last_field.as_ref().map(|f| f.to_string());
                    match name {
                        Some(name) if validate::is_sql_ident(name.trim_start_matches("r#")) => {
                            let lit = LitStr::new(name.trim_start_matches("r#"), part.span);
                            columns.push(
                                quote_spanned!(part.span=> #rt::__private::SqlIdent::new(#lit)),
                            );
                        }
                        _ => {
                            return Err(syn::Error::new(
                                part.span,
                                format!(
                                    "key part `{}` does not end in a field name to use as its column; add column = \"...\"",
                                    part.text
                                ),
                            ));
                        }
                    }
                }
                columns
            }
        };
        let table = sql_ident(config, table);
        Ok(quote! {
            #rt::__private::Target {
                table: #table,
                columns: const { &[#(#columns),*] },
            }
        })
    }
}

/// `const { SqlIdent::new("name") }`: checked again when the program compiles.
fn sql_ident(config: &Config, ident: &validate::SqlIdent) -> TokenStream {
    let rt = &config.runtime;
    let lit = LitStr::new(&ident.name, ident.span);
    quote_spanned!(ident.span=> const { #rt::__private::SqlIdent::new(#lit) })
}

/// `distributed_lock`: acquire a leased lock (with a fencing token, handed to
/// the `#[fence]` parameter if there is one), run the body while the lease is
/// renewed, store the response for replay.
fn expand_distributed_lock(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let rt = &config.runtime;
    let (output, block) = (&func.sig.output, &func.block);
    let (param, bind) = match &config.fence {
        Some(fence) => injected_binding(fence),
        None => {
            let unused = Ident::new("__idempotent_fence", Span::mixed_site());
            (quote!(#unused: #rt::__private::FencingToken), quote!())
        }
    };
    Ok(replaying(
        config,
        func,
        ("distributed_lock", "run", "lock_store"),
        None,
        quote!(async |#param| #output { #bind #block }),
    ))
}

/// `token`: consume the one-time token (the single key part) in one server
/// step, run the body, store the response under the token for replay.
fn expand_token(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let token = match config.key.as_slice() {
        [token] => token,
        [_, second, ..] => {
            return Err(syn::Error::new(
                second.span,
                "strategy `token` takes one key part, the token: write key = \"req.token\" (the value from `issue_token`)",
            ));
        }
        [] => {
            return Err(syn::Error::new(
                config.strategy_span,
                "strategy `token` needs `key`",
            ));
        }
    };
    let (output, block) = (&func.sig.output, &func.block);
    let (span, token_expr) = (token.span, &token.tokens);
    Ok(replaying(
        config,
        func,
        ("token", "run", "token_store"),
        Some(quote_spanned!(span=> &(#token_expr))),
        quote!(async || #output #block),
    ))
}

/// `dedup_table`: claim the key in the idempotency-record table, run the body,
/// store its response for replay. Claim mode without `#[tx]` (the claim is
/// committed first, with a lease), transactional mode with it (the claim lives
/// in the body's transaction).
fn expand_dedup_table(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let (output, block) = (&func.sig.output, &func.block);
    Ok(match &config.tx {
        None => replaying(
            config,
            func,
            ("dedup_table", "run", "claim_store"),
            None,
            quote!(async || #output #block),
        ),
        Some(tx) => {
            // The closure's parameter type comes from the store; the user's `#[tx]` type is
            // checked by a `let` spanned at it, so a connection of another database is one
            // "mismatched types" error at that type.
            let (conn, bind) = injected_binding(tx);
            replaying(
                config,
                func,
                ("dedup_table", "run_in_tx", "tx_store"),
                None,
                quote!(async |#conn| #output { #bind #block }),
            )
        }
    })
}

/// The wrapper of a replaying strategy: the storage key, the fingerprint and the options as
/// hygienic locals, then `rt::__private::<module>::<entry>(<through>(store), [token,] key,
/// fingerprint, options, into_error, body).await`.
fn replaying(
    config: &Config,
    func: &ItemFn,
    (module, entry, through): (&str, &str, &str),
    token: Option<TokenStream>,
    body: TokenStream,
) -> TokenStream {
    let rt = &config.runtime;
    let locals = Locals::new();
    let key = key_statement(config, &locals.key);
    let fingerprint = fingerprint_statement(config, &locals.fingerprint);
    let module = Ident::new(module, Span::call_site());
    let entry = Ident::new(entry, Span::call_site());
    let options = options_literal(config, quote!(#rt::__private::#module::Options));
    let store = store_through(config, through);
    let into_error = into_error_fn(config);
    let Locals {
        key: key_ident,
        fingerprint: fingerprint_ident,
        options: options_ident,
    } = &locals;
    // The call is spanned at the user's `T`, so that `T: Replayable` is reported once, there;
    // the store's type is `_` at the store; `E` needs nothing (`into_error` carries it). The
    // generics are `<S, [K,] T, E, F>`, `K` being the token's type.
    let (ok_type, ok_span) = match &config.ok_type {
        Some(ty) => (ty.to_token_stream(), ty.span()),
        None => (quote!(_), Span::call_site()),
    };
    let store_type = quote_spanned!(config.store.span=> _);
    let token_type = token.is_some().then(|| quote!(_,));
    let token = token.map(|token| quote!(#token,));
    let call = call_entry(
        config,
        ok_span,
        quote!(#module::#entry),
        Some(quote!(#store_type, #token_type #ok_type, _, _)),
        quote! {
            #store,
            #token
            #key_ident,
            #fingerprint_ident,
            #options_ident,
            #into_error,
            #body,
        },
    );
    wrapper(
        func,
        config,
        quote! {
            #key
            #fingerprint
            let #options_ident = #options;
            #call
        },
    )
}

/// `rt::__private::<entry>::<generics>(args).await`, with the path and the `.await` spanned at
/// `span`.
///
/// rustc reports an unmet bound of the entry point at the call and again at its `.await`; with
/// both at the one type the bound is about, the two reports are one. Bounds a user can break
/// are therefore either about that type, or checked before the call (see `__private`).
fn call_entry(
    config: &Config,
    span: Span,
    entry: TokenStream,
    generics: Option<TokenStream>,
    args: TokenStream,
) -> TokenStream {
    let rt = validate::respan(config.runtime.to_token_stream(), span);
    let entry = validate::respan(entry, span);
    let generics = generics.map(|generics| quote_spanned!(span=> ::<#generics>));
    let await_ = quote_spanned!(span=> .await);
    quote_spanned!(span=> #rt::__private::#entry #generics (#args) #await_)
}

/// Names of the wrapper's locals: mixed-site spans, so the user's code (the
/// body, the key expressions) can neither see nor shadow them.
struct Locals {
    /// The storage key.
    key: Ident,
    /// The request fingerprint.
    fingerprint: Ident,
    /// The strategy's options.
    options: Ident,
}

impl Locals {
    /// `__idempotent_key`, `__idempotent_fingerprint`, `__idempotent_options`.
    fn new() -> Locals {
        let local = |name: &str| Ident::new(name, Span::mixed_site());
        Locals {
            key: local("__idempotent_key"),
            fingerprint: local("__idempotent_fingerprint"),
            options: local("__idempotent_options"),
        }
    }
}

/// `match expr { Ok(v) => v, Err(e) => return Err(into_error(e)) }`: a runtime
/// error before the body runs becomes the function's own error type.
fn try_runtime(config: &Config, expr: TokenStream) -> TokenStream {
    // The whole conversion is spanned at `E`: rustc points an unmet bound of a call at the
    // call expression, parentheses included.
    let into_error = into_error_fn(config);
    let error = Ident::new("error", config.err_span);
    let convert = quote_spanned!(config.err_span=> #into_error(#error));
    quote! {
        match #expr {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(#error) => {
                return ::core::result::Result::Err(#convert);
            }
        }
    }
}

/// `let __idempotent_key = KeyBuilder::new(name).scope(..).part(..)...finish()?;`
fn key_statement(config: &Config, local: &Ident) -> TokenStream {
    let rt = &config.runtime;
    let name = &config.name;
    let scope = config.scope.as_ref().map(|scope| {
        let (span, expr) = (scope.span, &scope.tokens);
        quote_spanned!(span=> .scope(&(#expr)))
    });
    let parts = config.key.iter().map(|part| {
        let (span, expr) = (part.span, &part.tokens);
        quote_spanned!(span=> .part(&(#expr)))
    });
    let value = try_runtime(
        config,
        quote!(#rt::__private::KeyBuilder::new(#name) #scope #(#parts)* .finish()),
    );
    quote!(let #local = #value;)
}

/// `let __idempotent_fingerprint = Fingerprinter::new().arg("x", &(x))...finish()?;`
fn fingerprint_statement(config: &Config, local: &Ident) -> TokenStream {
    let rt = &config.runtime;
    let builder = match &config.fingerprint {
        Fingerprint::Disabled(span) => {
            quote_spanned!(*span=> #rt::__private::Fingerprinter::disabled())
        }
        Fingerprint::Args(args) => {
            let calls = args.iter().map(|arg| {
                let (span, expr) = (arg.span, &arg.tokens);
                let label = LitStr::new(&arg.label, span);
                quote_spanned!(span=> .arg(#label, &(#expr)))
            });
            quote!(#rt::__private::Fingerprinter::new() #(#calls)*)
        }
    };
    let value = try_runtime(config, quote!(#builder.finish()));
    quote!(let #local = #value;)
}

/// `Options { lease: .., ttl: .., on_busy: .., ..Default::default() }` with the
/// options that were given.
fn options_literal(config: &Config, options_type: TokenStream) -> TokenStream {
    let rt = &config.runtime;
    let duration = |millis: &Millis| {
        let ms = Literal::u64_unsuffixed(millis.ms);
        quote_spanned!(millis.span=> #rt::__private::Duration::from_millis(#ms))
    };
    let lease = config.lease.as_ref().map(|lease| {
        let value = duration(lease);
        quote_spanned!(lease.span=> lease: #value,)
    });
    let ttl = config.ttl.as_ref().map(|ttl| {
        let value = duration(ttl);
        quote_spanned!(ttl.span=> ttl: #value,)
    });
    let on_busy = config.on_busy.as_ref().map(|on_busy| match on_busy {
        OnBusy::Reject(span) => {
            quote_spanned!(*span=> on_busy: #rt::__private::OnBusy::Reject,)
        }
        OnBusy::Wait(wait) => {
            let value = duration(wait);
            quote_spanned!(wait.span=> on_busy: #rt::__private::OnBusy::Wait(#value),)
        }
    });
    quote! {
        #options_type {
            #lease
            #ttl
            #on_busy
            ..::core::default::Default::default()
        }
    }
}

/// `rt::__private::into_error`, spanned at the user's `E`: the one place `E: From<Error>` is
/// checked, however often it is used.
fn into_error_fn(config: &Config) -> TokenStream {
    let span = config.err_span;
    let rt = validate::respan(config.runtime.to_token_stream(), span);
    quote_spanned!(span=> #rt::__private::into_error)
}

/// `rt::__private::<through>(store)`, spanned at the store: the one place a store of the wrong
/// kind is reported (`claim_store`, `tx_store`, `lock_store`, `token_store`).
fn store_through(config: &Config, through: &str) -> TokenStream {
    let span = config.store.span;
    let rt = validate::respan(config.runtime.to_token_stream(), span);
    let through = Ident::new(through, span);
    let store = store_argument(&config.store);
    quote_spanned!(span=> #rt::__private::#through(#store))
}

/// The store as the runtime takes it: `&*param`, `&mut *param` or `&(expr)`.
fn store_argument(store: &Store) -> TokenStream {
    let (span, expr) = (store.span, &store.tokens);
    match store.kind {
        StoreKind::Reborrow => quote_spanned!(span=> &*#expr),
        StoreKind::ReborrowMut => quote_spanned!(span=> &mut *#expr),
        StoreKind::Borrow => quote_spanned!(span=> &(#expr)),
    }
}

/// The body closure's parameter for an injected value (`#[tx]`, `#[fence]`), untyped so its
/// type comes from the runtime, and the statement binding it to the user's name and type:
/// `let mut? name: Type = __idempotent_<name>;`, spanned at `Type`, so a parameter of the wrong
/// type is one "mismatched types" error at that type.
fn injected_binding(injected: &Injected) -> (TokenStream, TokenStream) {
    let (mutability, ident, ty) = (&injected.mutability, &injected.ident, &injected.ty);
    let name = format!(
        "__idempotent_{}",
        ident.to_string().trim_start_matches("r#")
    );
    let param = Ident::new(&name, Span::mixed_site());
    let param_at_ty = Ident::new(&name, Span::mixed_site().located_at(ty.span()));
    let bind = quote_spanned!(ty.span()=> let #mutability #ident: #ty = #param_at_ty;);
    (quote!(#param), bind)
}

/// The function with its injected parameters removed and `body` as its body;
/// attributes, visibility, name, generics, where clause and return type stay.
fn wrapper(func: &ItemFn, config: &Config, body: TokenStream) -> TokenStream {
    let outer = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer));
    let inner = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Inner(_)));
    let injected: Vec<usize> = [config.tx.as_ref(), config.fence.as_ref()]
        .into_iter()
        .flatten()
        .map(|injected| injected.index)
        .collect();
    let mut sig = func.sig.clone();
    sig.inputs = std::mem::take(&mut sig.inputs)
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !injected.contains(index))
        .map(|(_, arg)| arg)
        .collect();
    strip_injected_attrs(&mut sig);
    let vis = &func.vis;
    let sig = sig.to_token_stream();
    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #body
        }
    }
}
