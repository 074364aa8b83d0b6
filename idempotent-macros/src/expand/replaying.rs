//! Code generation for the replaying strategies (`dedup_table`, `distributed_lock`, `token`):
//! the storage key and fingerprint as hygienic locals, then one call of
//! `<T as __private::ResponseType>::replaying` with a
//! `Replay { strategy, key, fingerprint, into_error }`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Ident, ItemFn, LitStr};

use super::{
    bound_block, call_entry, check_at, injected_binding, private_at, store_through,
    tx_store_statements,
};
use crate::model::{Config, Fingerprint, Millis, OnBusy, OnCancel, ReplayMode, Replaying};
use crate::syntax::ends;

/// The wrapper's body for a replaying strategy.
///
/// ```text
/// let __idempotent_key = <KeyPartArg::add_part(.., KeyBuilder::new(name)) ... finish()>?;
/// let __idempotent_fingerprint = <FingerprintArg::add_arg(.., Fingerprinter::new()) ... finish()>?;
/// <T as rt::__private::ResponseType>::replaying(
///     rt::__private::Replay {
///         strategy: rt::__private::DedupTable { store: AsClaimStore::as_claim_store(&store), options },
///         key, fingerprint, into_error: ErrorType::into_error,
///     },
///     async |injected| -> Result<T, E> { BODY },
/// ).await
/// ```
///
/// With `#[tx]` the store is bound first (`tx_store_statements`).
pub(super) fn expand(config: &Config, replaying: &Replaying, func: &ItemFn) -> TokenStream {
    let rt = &config.runtime;
    let key_local = Ident::new("__idempotent_key", Span::mixed_site());
    let fingerprint_local = Ident::new("__idempotent_fingerprint", Span::mixed_site());
    let key = key_statement(config, replaying, &key_local);
    let fingerprint = fingerprint_statement(config, replaying, &fingerprint_local);

    let options = |name: &str| {
        let name = Ident::new(name, Span::call_site());
        options_literal(config, replaying, quote!(#rt::__private::#name))
    };
    let (output, block) = (&func.sig.output, &func.block);
    let mut store_statements = TokenStream::new();
    let (strategy, body) = match &replaying.mode {
        ReplayMode::DedupTable => {
            let store = store_through(config, "AsClaimStore", "as_claim_store");
            let options = options("DedupTableOptions");
            (
                quote!(#rt::__private::DedupTable { store: #store, options: #options }),
                quote!(async |_| #output #block),
            )
        }
        ReplayMode::DedupTableInTx(tx) => {
            // The closure's parameter type comes from the store; the user's `#[tx]` type is
            // checked against it first (`TxParam`, at that type), so a connection of another
            // database is one error there, saying which connection the store opens.
            let (statements, store) = tx_store_statements(config, tx);
            store_statements = statements;
            let options = options("DedupTableOptions");
            let (conn, bind) = injected_binding(tx, false);
            let bound = bound_block(&bind, block);
            (
                quote!(#rt::__private::DedupTableInTx { store: #store, options: #options }),
                quote!(async |#conn| #output #bound),
            )
        }
        ReplayMode::DistributedLock(fence) => {
            let store = store_through(config, "AsLockStore", "as_lock_store");
            let options = options("LockOptions");
            let body = match fence {
                Some(fence) => {
                    let (param, bind) = injected_binding(fence, true);
                    let bound = bound_block(&bind, block);
                    quote!(async |#param| #output #bound)
                }
                None => quote!(async |_| #output #block),
            };
            (
                quote!(#rt::__private::DistributedLock { store: #store, options: #options }),
                body,
            )
        }
        ReplayMode::Token(token) => {
            let store = store_through(config, "AsTokenStore", "as_token_store");
            let options = options("TokenOptions");
            let (span, token) = (token.span, &token.tokens);
            let token = check_at(
                config,
                span,
                "KeyPartArg",
                "key_part",
                quote_spanned!(span=> &(#token)),
            );
            let token = quote_spanned!(span=> &#token);
            (
                quote!(#rt::__private::Token { store: #store, token: #token, options: #options }),
                quote!(async |_| #output #block),
            )
        }
    };

    // The adapter is `ResponseType::replaying`, called as `<T as ResponseType>::replaying` and
    // spanned at the user's `T`, so that `T: Replayable` is checked once, there; `E` is checked
    // by `into_error` (at `E`) and the store by its own check (at `store`).
    let (ok_type, ok_span) = match &config.ok_type {
        Some(ty) => (ty.to_token_stream(), ty.span()),
        None => (quote!(_), Span::call_site()),
    };
    // From `T`'s first token to its last, so that the error covers the whole type.
    let ok_end = config
        .ok_type
        .as_ref()
        .map_or(ok_span, |ty| ends(&ty.to_token_stream()).1);
    let response_type = private_at(config, ok_span, "ResponseType");
    let entry = Ident::new("replaying", ok_end);
    let into_error = into_error(config);
    let call = call_entry(
        ok_span,
        quote_spanned!(ok_span=> <#ok_type as #response_type>::#entry),
        quote! {
            #rt::__private::Replay {
                strategy: #strategy,
                key: #key_local,
                fingerprint: #fingerprint_local,
                into_error: #into_error,
            },
            #body,
        },
    );
    quote! {
        #key
        #fingerprint
        #store_statements
        #call
    }
}

/// `rt::__private::ErrorType::into_error`, from `E`'s first token to its last: the one check
/// of `E`'s bounds.
fn into_error(config: &Config) -> TokenStream {
    let error_type = private_at(config, config.err_span, "ErrorType");
    let method = Ident::new("into_error", config.err_end);
    quote_spanned!(config.err_span=> #error_type::#method)
}

/// `match expr { Ok(v) => v, Err(e) => return Err(into_error(e)) }`: a runtime
/// error before the body runs becomes the function's own error type.
fn try_runtime(config: &Config, expr: TokenStream) -> TokenStream {
    // The whole conversion is spanned at `E`: rustc points an unmet bound of a call at the
    // call expression, parentheses included.
    let into_error = into_error(config);
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

/// `let __idempotent_key = add_part(&(b), add_part(&(a), add_scope(&(s), KeyBuilder::new(name))))
/// .finish()?;`: each part checked (`KeyPartArg`) and added where it is written.
fn key_statement(config: &Config, replaying: &Replaying, local: &Ident) -> TokenStream {
    let rt = &config.runtime;
    let name = &replaying.name;
    let mut builder = quote!(#rt::__private::KeyBuilder::new(#name));
    if let Some(scope) = &replaying.scope {
        let (span, expr) = (scope.span, &scope.tokens);
        builder = check_at(
            config,
            span,
            "KeyPartArg",
            "add_scope",
            quote_spanned!(span=> &(#expr), #builder),
        );
    }
    for part in &config.key {
        let (span, expr) = (part.span, &part.tokens);
        builder = check_at(
            config,
            span,
            "KeyPartArg",
            "add_part",
            quote_spanned!(span=> &(#expr), #builder),
        );
    }
    let value = try_runtime(config, quote!(#builder.finish()));
    quote!(let #local = #value;)
}

/// `let __idempotent_fingerprint = add_arg(&(x), "x", Fingerprinter::new())...finish()?;`:
/// each argument checked (`FingerprintArg`) and added where it is written.
fn fingerprint_statement(config: &Config, replaying: &Replaying, local: &Ident) -> TokenStream {
    let rt = &config.runtime;
    let builder = match &replaying.fingerprint {
        Fingerprint::Disabled(span) => {
            quote_spanned!(*span=> #rt::__private::Fingerprinter::disabled())
        }
        Fingerprint::Args(args) => {
            let mut builder = quote!(#rt::__private::Fingerprinter::new());
            for arg in args {
                let (span, expr) = (arg.span, &arg.tokens);
                let label = LitStr::new(&arg.label, span);
                builder = check_at(
                    config,
                    span,
                    "FingerprintArg",
                    "add_arg",
                    quote_spanned!(span=> &(#expr), #label, #builder),
                );
            }
            builder
        }
    };
    let value = try_runtime(config, quote!(#builder.finish()));
    quote!(let #local = #value;)
}

/// `Options { lease: .., ttl: .., on_busy: .., on_cancel: .., ..Default::default() }` with the
/// options that were given.
fn options_literal(
    config: &Config,
    replaying: &Replaying,
    options_type: TokenStream,
) -> TokenStream {
    let rt = &config.runtime;
    let duration = |millis: &Millis| {
        let ms = Literal::u64_unsuffixed(millis.ms);
        quote_spanned!(millis.span=> #rt::__private::Duration::from_millis(#ms))
    };
    let lease = replaying.lease.as_ref().map(|lease| {
        let value = duration(lease);
        quote_spanned!(lease.span=> lease: #value,)
    });
    let ttl = replaying.ttl.as_ref().map(|ttl| {
        let value = duration(ttl);
        quote_spanned!(ttl.span=> ttl: #value,)
    });
    let on_busy = replaying.on_busy.as_ref().map(|on_busy| match on_busy {
        OnBusy::Reject(span) => {
            quote_spanned!(*span=> on_busy: #rt::__private::OnBusy::Reject,)
        }
        OnBusy::Wait(wait) => {
            let value = duration(wait);
            quote_spanned!(wait.span=> on_busy: #rt::__private::OnBusy::Wait(#value),)
        }
    });
    let on_cancel = replaying
        .on_cancel
        .as_ref()
        .map(|on_cancel| match on_cancel {
            OnCancel::Keep(span) => {
                quote_spanned!(*span=> on_cancel: #rt::__private::OnCancel::Keep,)
            }
            OnCancel::Release(span) => {
                quote_spanned!(*span=> on_cancel: #rt::__private::OnCancel::Release,)
            }
        });
    quote! {
        #options_type {
            #lease
            #ttl
            #on_busy
            #on_cancel
            ..::core::default::Default::default()
        }
    }
}
