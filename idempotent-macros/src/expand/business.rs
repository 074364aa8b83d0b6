//! Code generation for the business-table strategies (`select_before_insert`, `pessimistic`,
//! `optimistic`, `unique_index`, `state_machine`): one call of `__private::business` with a
//! `Business { store, key, kit, strategy, on_duplicate }` and the body factory.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{ItemFn, LitStr};

use super::{bound_block, call_entry, injected_binding, private_at, store_through};
use crate::model::{Business, BusinessRule, Config, SqlIdent, Target};

/// The wrapper's body for a business-table strategy.
///
/// ```text
/// rt::__private::business(
///     rt::__private::Business { store, key: (&(order.code),), kit: error_kit(),
///                               strategy: rt::__private::Optimistic { target, version },
///                               on_duplicate: Some(async || handler(args).await) },
///     || async |tx| -> Result<T, E> { let tx: &mut Conn = tx; BODY },
/// ).await
/// ```
///
/// The call and its `.await` are spanned at the first key part, so that a key part the
/// database cannot bind is reported once; `error_kit` is spanned at `E`, the one check of
/// `E`'s bounds.
pub(super) fn expand(config: &Config, business: &Business, func: &ItemFn) -> TokenStream {
    let rt = &config.runtime;
    let store = store_through(config, "tx_store");
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
        let error_kit = private_at(config, config.err_span, "error_kit");
        quote_spanned!(config.err_span=> #error_kit())
    };
    let strategy = strategy(config, &business.rule);
    let on_duplicate = match &business.on_duplicate {
        Some(handler) => {
            let (path, args) = (&handler.path, &handler.args);
            let span = syn::spanned::Spanned::span(path);
            let call = quote_spanned!(span=> async || #path(#(#args),*).await);
            quote!(::core::option::Option::Some(#call))
        }
        None => quote!(#rt::__private::no_handler()),
    };
    let (param, bind) = injected_binding(&business.tx, false);
    let (output, block) = (&func.sig.output, &func.block);
    let bound = bound_block(&bind, block);
    let body = quote!(|| async |#param| #output #bound);
    // rustc may blame an unmet bound on the argument holding the type: the `Business` literal
    // is spanned at the key too, so that report and the call's are one.
    let business = private_at(config, key_span, "Business");
    let call = quote_spanned! {key_span=>
        #business {
            store: #store,
            key: #key,
            kit: #kit,
            strategy: #strategy,
            on_duplicate: #on_duplicate,
        }
    };
    call_entry(config, key_span, "business", None, quote!(#call, #body,))
}

/// The strategy's own part: `SelectBeforeInsert { target }`, `Optimistic { target, version }`, …
fn strategy(config: &Config, rule: &BusinessRule) -> TokenStream {
    let rt = &config.runtime;
    match rule {
        BusinessRule::SelectBeforeInsert(target) => {
            let target = target_literal(config, target);
            quote!(#rt::__private::SelectBeforeInsert { target: #target })
        }
        BusinessRule::Pessimistic(target) => {
            let target = target_literal(config, target);
            quote!(#rt::__private::Pessimistic { target: #target })
        }
        BusinessRule::Optimistic { target, version } => {
            let target = target_literal(config, target);
            let (span, expr) = (version.span, &version.tokens);
            let version = quote_spanned!(span=> &(#expr));
            quote!(#rt::__private::Optimistic { target: #target, version: #version })
        }
        BusinessRule::UniqueIndex { constraint, target } => {
            let constraint = match constraint {
                Some(constraint) => {
                    let ident = sql_ident(config, constraint);
                    quote!(::core::option::Option::Some(#ident))
                }
                None => quote!(::core::option::Option::None),
            };
            let target = match target {
                Some(target) => {
                    let target = target_literal(config, target);
                    quote!(::core::option::Option::Some(#target))
                }
                None => quote!(::core::option::Option::None),
            };
            quote!(#rt::__private::UniqueIndex { constraint: #constraint, target: #target })
        }
        BusinessRule::StateMachine {
            target,
            status_column,
            from,
            to,
            done,
        } => {
            let target = target_literal(config, target);
            let status = sql_ident(config, status_column);
            quote! {
                #rt::__private::StateMachine {
                    target: #target,
                    status_column: #status,
                    from: #from,
                    to: #to,
                    done: &[#(#done),*],
                }
            }
        }
    }
}

/// `Target { table, columns }`, every name checked again when the program compiles.
fn target_literal(config: &Config, target: &Target) -> TokenStream {
    let rt = &config.runtime;
    let table = sql_ident(config, &target.table);
    let columns = target.columns.iter().map(|column| {
        let lit = LitStr::new(&column.name, column.span);
        quote_spanned!(column.span=> #rt::__private::SqlIdent::new(#lit))
    });
    quote! {
        #rt::__private::Target {
            table: #table,
            columns: const { &[#(#columns),*] },
        }
    }
}

/// `const { SqlIdent::new("name") }`: checked again when the program compiles.
fn sql_ident(config: &Config, ident: &SqlIdent) -> TokenStream {
    let rt = &config.runtime;
    let lit = LitStr::new(&ident.name, ident.span);
    quote_spanned!(ident.span=> const { #rt::__private::SqlIdent::new(#lit) })
}
