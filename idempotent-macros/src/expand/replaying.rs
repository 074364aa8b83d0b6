//! Code generation for the replaying strategies (`dedup_table`, `distributed_lock`, `token`):
//! the storage key and fingerprint as hygienic locals, then one call of
//! `<T as __private::ResponseType>::replaying` with a
//! `Replay { strategy, key, fingerprint, into_error, same, policy }`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Ident, ItemFn, LitStr};

use super::{
    bound_block, call_entry, check_at, injected_binding, private_at, store_through,
    tx_store_statements,
};
use crate::model::{
    Config, Fingerprint, FingerprintArg, Millis, OnBusy, OnCancel, ReplayMode, Replaying,
};
use crate::syntax::{UnrawString as _, ends};

/// The wrapper's body for a replaying strategy.
///
/// ```text
/// static __IDEMPOTENT_OPERATION: OperationSite = ..; submit!(..); <its check>?;
/// let __idempotent_key = <KeyPartArg::add_part(.., KeyBuilder::new(name)) ... finish()>?;
/// let __idempotent_fingerprint = <{ per argument: a trait of its own naming it } ... finish()>?;
/// <T as rt::__private::ResponseType>::replaying(
///     rt::__private::Replay {
///         strategy: rt::__private::DedupTable { store: AsClaimStore::as_claim_store(&store), options },
///         key, fingerprint, into_error: ErrorType::into_error,
///         same: rt::__private::Probe::<T>::new().same(),
///         policy: rt::__private::ReleaseAll, // `terminal = "f"`: TerminalErrorType::terminal(f)
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
    let site = site_statements(config, replaying, func);
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
    let same = same_value(config);
    let policy = policy(config, replaying);
    let call = call_entry(
        ok_span,
        quote_spanned!(ok_span=> <#ok_type as #response_type>::#entry),
        quote! {
            #rt::__private::Replay {
                strategy: #strategy,
                key: #key_local,
                fingerprint: #fingerprint_local,
                into_error: #into_error,
                same: #same,
                policy: #policy,
            },
            #body,
        },
    );
    quote! {
        #site
        #key
        #fingerprint
        #store_statements
        #call
    }
}

/// How the response is compared with the copy read back from its JSON:
/// `rt::__private::Probe::<T>::new().same()`, which is `Some(a == b)` when `T: PartialEq` and
/// `None` otherwise (autoderef specialization: the fallback is reached through `Deref`, so a
/// `T` without `PartialEq` is no error). Inside a generic function a `T` not bounded by
/// `PartialEq` takes the fallback. Without a nameable `T` (a `Result` alias without arguments)
/// the fallback is called directly, its `T` inferred.
fn same_value(config: &Config) -> TokenStream {
    let rt = &config.runtime;
    match &config.ok_type {
        Some(ty) => quote!(#rt::__private::Probe::<#ty>::new().same()),
        None => quote!(::core::ops::Deref::deref(&#rt::__private::Probe::new()).same()),
    }
}

/// What an error from the body does: `rt::__private::ReleaseAll` (release the claim), or with
/// `terminal = "path"` `rt::__private::TerminalErrorType::terminal(path)`, spanned at the
/// option, so that an `E` that is not `Serialize + DeserializeOwned` is one error there.
fn policy(config: &Config, replaying: &Replaying) -> TokenStream {
    let rt = &config.runtime;
    match &replaying.terminal {
        None => quote!(#rt::__private::ReleaseAll),
        Some(path) => {
            let span = path.span();
            let check = private_at(config, span, "TerminalErrorType");
            let method = Ident::new("terminal", span);
            quote_spanned!(span=> #check::#method(#path))
        }
    }
}

/// `rt::__private::ErrorType::into_error`, from `E`'s first token to its last: the one check
/// of `E`'s bounds.
fn into_error(config: &Config) -> TokenStream {
    let error_type = private_at(config, config.err_span, "ErrorType");
    let method = Ident::new("into_error", config.err_end);
    quote_spanned!(config.err_span=> #error_type::#method)
}

/// The function's registration as an operation, and its name check before anything else:
///
/// ```text
/// static __IDEMPOTENT_OPERATION: rt::__private::OperationSite =
///     rt::__private::OperationSite::new(name, "fn_name", file!(), line!(), column!());
/// rt::__private::inventory::submit!(rt::__private::Registered(&__IDEMPOTENT_OPERATION));
/// OperationSite::check(&__IDEMPOTENT_OPERATION)?;
/// ```
///
/// The statics are items, so one per function however often (and with whatever generics) it
/// is called; the location macros are spanned at the function's name, which they report.
fn site_statements(config: &Config, replaying: &Replaying, func: &ItemFn) -> TokenStream {
    let rt = &config.runtime;
    let name = &replaying.name;
    let ident = &func.sig.ident;
    let function = LitStr::new(&ident.unraw_string(), ident.span());
    let location =
        quote_spanned!(ident.span()=> ::core::file!(), ::core::line!(), ::core::column!());
    let site = Ident::new("__IDEMPOTENT_OPERATION", Span::mixed_site());
    let check = try_runtime(config, quote!(#rt::__private::OperationSite::check(&#site)));
    quote! {
        static #site: #rt::__private::OperationSite =
            #rt::__private::OperationSite::new(#name, #function, #location);
        #rt::__private::inventory::submit!(#rt::__private::Registered(&#site));
        #check;
    }
}

/// `match expr { Ok(v) => v, Err(e) => return Err(into_error(e)) }`: a runtime
/// error before the body runs becomes the function's own error type.
fn try_runtime(config: &Config, expr: TokenStream) -> TokenStream {
    // The whole conversion is spanned at `E`: rustc points an unmet bound of a call at the
    // call expression, parentheses included.
    let into_error = into_error(config);
    // The bindings are hygienic (`mixed_site`) and prefixed, so that no user item in scope
    // (a `const value`, a unit struct `error`) turns them into patterns.
    let value = Ident::new("__idempotent_value", Span::mixed_site());
    let error = Ident::new(
        "__idempotent_error",
        Span::mixed_site().located_at(config.err_span),
    );
    let convert = quote_spanned!(config.err_span=> #into_error(#error));
    quote! {
        match #expr {
            ::core::result::Result::Ok(#value) => #value,
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
    // A token's errors name the token ("the token is empty"), as the token's own key does.
    let finish = match replaying.mode {
        ReplayMode::Token(_) => quote!(finish_token),
        _ => quote!(finish),
    };
    let value = try_runtime(config, quote!(#builder.#finish()));
    quote!(let #local = #value;)
}

/// `let __idempotent_fingerprint = { <checks>; Fingerprinter::new() <args> }.finish()?;`
///
/// Each argument goes in through a trait of its own, defined here with a message naming the
/// argument (see [`fingerprint_arg`]), so an argument that is not `Serialize` is one error at
/// that argument, saying how to leave it out of the fingerprint.
fn fingerprint_statement(config: &Config, replaying: &Replaying, local: &Ident) -> TokenStream {
    let rt = &config.runtime;
    let builder = match &replaying.fingerprint {
        Fingerprint::Disabled(span) => {
            quote_spanned!(*span=> #rt::__private::Fingerprinter::disabled())
        }
        Fingerprint::Args(args) => {
            let fingerprinter = Ident::new("__idempotent_fingerprinter", Span::mixed_site());
            let calls = args
                .iter()
                .map(|arg| fingerprint_arg(config, args, arg, &fingerprinter));
            quote! {{
                let #fingerprinter = #rt::__private::Fingerprinter::new();
                #(let #fingerprinter = #calls;)*
                #fingerprinter
            }}
        }
    };
    let value = try_runtime(config, quote!(#builder.finish()));
    quote!(let #local = #value;)
}

/// One fingerprinted argument, added in a block of its own:
/// `{ trait Serialize { .. } impl<A: rt::Serialize> Serialize for A { .. } Serialize::arg(&(x), fp, "x") }`.
///
/// The block's trait `Serialize` is implemented for every `serde::Serialize` type; its
/// `#[diagnostic::on_unimplemented]` names the argument and the `fingerprint` that leaves it
/// out, and the call is spanned at the argument. The blanket impl is `do_not_recommend`, so
/// rustc reports the trait's own message rather than the bound behind it ("the trait
/// `Serialize` is not implemented for `Pool`" is its help line); and serde's bound is met
/// inside the impl, so an argument that fails it draws no second error.
fn fingerprint_arg(
    config: &Config,
    args: &[FingerprintArg],
    arg: &FingerprintArg,
    fingerprinter: &Ident,
) -> TokenStream {
    let rt = &config.runtime;
    let (span, expr) = (arg.span, &arg.tokens);
    let trait_def = Ident::new("Serialize", Span::call_site());
    let trait_use = Ident::new("Serialize", span);
    let method = Ident::new("__idempotent_arg", Span::call_site());
    let method_use = Ident::new("__idempotent_arg", span);
    let others: Vec<String> = args
        .iter()
        .filter(|other| other.label != arg.label)
        .map(|other| format!("{:?}", other.label))
        .collect();
    // `{` and `}` are the format string's own.
    let escape = |text: &str| text.replace('{', "{{").replace('}', "}}");
    let name = escape(&arg.label);
    let rest = escape(&format!("fingerprint = [{}]", others.join(", ")));
    let (message, label, note) = if arg.listed {
        (
            format!(
                "`{name}` is listed in `fingerprint`, but its type `{{Self}}` is not `Serialize`"
            ),
            "listed in `fingerprint`".to_owned(),
            if others.is_empty() {
                "remove it: write `fingerprint = false` (no other argument is listed); to keep it, its type must implement `serde::Serialize`".to_owned()
            } else {
                format!(
                    "remove it from the list: `{rest}`; to keep it, its type must implement `serde::Serialize`"
                )
            },
        )
    } else {
        (
            format!(
                "parameter `{name}` is part of the request fingerprint, but its type `{{Self}}` is not `Serialize`"
            ),
            "fingerprinted by default, like every parameter but `self`, the store and `#[tx]`/`#[fence]`".to_owned(),
            if others.is_empty() {
                format!(
                    "to leave `{name}` out, write `fingerprint = false` (no other argument is fingerprinted); to keep it in, its type must implement `serde::Serialize`"
                )
            } else {
                format!(
                    "to leave `{name}` out, list the arguments that identify the request: `{rest}` (or `fingerprint = false` for no fingerprint); to keep it in, its type must implement `serde::Serialize`"
                )
            },
        )
    };
    let (message, label, note) = (
        LitStr::new(&message, Span::call_site()),
        LitStr::new(&label, Span::call_site()),
        LitStr::new(&note, Span::call_site()),
    );
    let label_lit = LitStr::new(&arg.label, span);
    let call = quote_spanned!(span=> #trait_use::#method_use(&(#expr), #fingerprinter, #label_lit));
    quote! {{
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #trait_def {
            fn #method(
                &self,
                __idempotent_fingerprinter: #rt::__private::Fingerprinter,
                __idempotent_label: &'static str,
            ) -> #rt::__private::Fingerprinter;
        }
        #[diagnostic::do_not_recommend]
        impl<__IdempotentArg: #rt::__private::Serialize + ?::core::marker::Sized> #trait_def
            for __IdempotentArg
        {
            fn #method(
                &self,
                __idempotent_fingerprinter: #rt::__private::Fingerprinter,
                __idempotent_label: &'static str,
            ) -> #rt::__private::Fingerprinter {
                __idempotent_fingerprinter.arg(__idempotent_label, self)
            }
        }
        #call
    }}
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
