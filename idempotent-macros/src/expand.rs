//! Stage 3: a validated [`Config`] + the function → the wrapper's tokens.
//!
//! [`expand`] drives the three stages; below it there is one function per
//! strategy. Only `dedup_table` generates code so far; the others report that
//! they are not implemented yet (their configuration is validated all the same).

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

/// The error for a strategy whose expansion is still to come.
fn not_implemented(config: &Config) -> syn::Error {
    syn::Error::new(
        config.strategy_span,
        format!(
            "strategy `{}` is not implemented yet (coming in a later release); available now: dedup_table",
            config.strategy.as_str()
        ),
    )
}

/// `select_before_insert`: not implemented yet.
fn expand_select_before_insert(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `pessimistic`: not implemented yet.
fn expand_pessimistic(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `optimistic`: not implemented yet.
fn expand_optimistic(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `unique_index`: not implemented yet.
fn expand_unique_index(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `state_machine`: not implemented yet.
fn expand_state_machine(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `distributed_lock`: not implemented yet.
fn expand_distributed_lock(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `token`: not implemented yet.
fn expand_token(config: &Config, _func: &ItemFn) -> syn::Result<TokenStream> {
    Err(not_implemented(config))
}

/// `dedup_table`: claim the key in the idempotency-record table, run the body,
/// store its response for replay. Claim mode without `#[tx]` (the claim is
/// committed first, with a lease), transactional mode with it (the claim lives
/// in the body's transaction).
fn expand_dedup_table(config: &Config, func: &ItemFn) -> syn::Result<TokenStream> {
    let rt = &config.runtime;
    let locals = Locals::new();
    let key = key_statement(config, &locals.key);
    let fingerprint = fingerprint_statement(config, &locals.fingerprint);
    let options_ident = &locals.options;
    let options = options_literal(config, quote!(#rt::__private::dedup_table::Options));
    // The response type goes in the call's turbofish, spanned at the user's `T`, so that
    // `run`'s `T: Serialize + DeserializeOwned` is reported at `T` in the signature.
    let ok_type = match &config.ok_type {
        Some(ty) => ty.to_token_stream(),
        None => quote!(_),
    };
    let store = store_argument(&config.store);
    let (key_ident, fingerprint_ident) = (&locals.key, &locals.fingerprint);
    let output = &func.sig.output;
    let block = &func.block;
    let run = match &config.tx {
        None => quote! {
            #rt::__private::dedup_table::run::<_, #ok_type, _, _>(
                #store,
                #key_ident,
                #fingerprint_ident,
                #options_ident,
                async || #output #block,
            )
            .await
        },
        Some(tx) => {
            // The closure's parameter type comes from the store; the user's `#[tx]` type is
            // checked by a `let` spanned at it, so a connection of another database is one
            // "mismatched types" error at that type.
            let (mutability, ident, ty) = (&tx.mutability, &tx.ident, &tx.ty);
            let conn = Ident::new("__idempotent_tx", Span::mixed_site());
            let conn_at_ty =
                Ident::new("__idempotent_tx", Span::mixed_site().located_at(ty.span()));
            let bind = quote_spanned!(ty.span()=> let #mutability #ident: #ty = #conn_at_ty;);
            let closure = quote!(async |#conn|);
            let block = quote!({ #bind #block });
            quote! {
                #rt::__private::dedup_table::run_in_tx::<_, #ok_type, _, _>(
                    #store,
                    #key_ident,
                    #fingerprint_ident,
                    #options_ident,
                    #closure #output #block,
                )
                .await
            }
        }
    };
    Ok(wrapper(
        func,
        config,
        quote! {
            #key
            #fingerprint
            let #options_ident = #options;
            #run
        },
    ))
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
    let rt = &config.runtime;
    quote! {
        match #expr {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(error) => {
                return ::core::result::Result::Err(#rt::__private::into_error(error));
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

/// `assert_replayable::<T>();` for replaying strategies, spanned at `T` so an
/// unserializable response type is reported there.
#[allow(
    dead_code,
    reason = "dedup_table checks `T` through its call's turbofish; kept for the strategies whose entry point cannot"
)]
fn assert_replayable(config: &Config) -> Option<TokenStream> {
    if !config.strategy.replays() {
        return None;
    }
    let ty = config.ok_type.as_ref()?;
    let rt = &config.runtime;
    Some(quote_spanned!(ty.span()=> #rt::__private::assert_replayable::<#ty>();))
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

/// `mut? name: Type` for the body closure's injected parameter.
#[allow(
    dead_code,
    reason = "dedup_table binds `#[tx]` with a checked `let`; kept for the other strategies' expansions"
)]
fn closure_param(injected: &Injected) -> TokenStream {
    let (mutability, ident, ty) = (&injected.mutability, &injected.ident, &injected.ty);
    quote!(#mutability #ident: #ty)
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
