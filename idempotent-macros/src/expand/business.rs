//! Code generation for the business-table strategies (`select_before_insert`, `pessimistic`,
//! `optimistic`, `unique_index`, `state_machine`): the store bound and checked, then one call
//! of `__private::business` with a `Business { store, key, kit, strategy, on_duplicate }` and
//! the body factory.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{Ident, ItemFn, LitStr};

use super::{bound_block, call_entry, check_at, injected_binding, private_at, tx_store_statements};
use crate::model::{Business, BusinessRule, Config, SqlIdent, Target};

/// The wrapper's body for a business-table strategy.
///
/// ```text
/// {
///     let __idempotent_store = <IntoTxStore and TxParam checks>;
///     let __idempotent_database = rt::__private::database_of(&__idempotent_store);
///     rt::__private::business(
///         rt::__private::Business {
///             store: __idempotent_store,
///             key: [KeyValueArg::key_value(__idempotent_database, &(order.code))],
///             kit: SqlErrorType::error_kit(),
///             strategy: rt::__private::Optimistic { target, version },
///             on_duplicate: Some(async || handler(args).await),
///         },
///         || async |tx| -> Result<T, E> { let tx: &mut Conn = tx; BODY },
///     ).await
/// }
/// ```
///
/// Each key part (and the version) is checked where it is written, for the store's database
/// (`KeyValueArg`, `VersionValueArg`), and passed on as a `&dyn BindValue`; `error_kit` is
/// spanned at `E`, the one check of `E`'s bounds. The adapter's own bounds then always hold.
pub(super) fn expand(config: &Config, business: &Business, func: &ItemFn) -> TokenStream {
    let rt = &config.runtime;
    let (store_statements, store) = tx_store_statements(config, &business.tx);
    let database = Ident::new("__idempotent_database", Span::mixed_site());
    let parts = config.key.iter().map(|part| {
        let (span, expr) = (part.span, &part.tokens);
        check_at(
            config,
            span,
            "KeyValueArg",
            "key_value",
            quote_spanned!(span=> #database, &(#expr)),
        )
    });
    let key_span = config
        .key
        .first()
        .map_or_else(Span::call_site, |part| part.span);
    let key = quote_spanned!(key_span=> [#(#parts),*]);
    let kit = {
        // From `E`'s first token to its last, so that the error covers the whole type.
        let check = private_at(config, config.err_span, "SqlErrorType");
        let method = Ident::new("error_kit", config.err_end);
        let mut args = Group::new(Delimiter::Parenthesis, TokenStream::new());
        args.set_span(config.err_end);
        quote_spanned!(config.err_span=> #check::#method #args)
    };
    let strategy = strategy(config, &business.rule, &database);
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
    let business_struct = private_at(config, key_span, "Business");
    let call = quote_spanned! {key_span=>
        #business_struct {
            store: #store,
            key: #key,
            kit: #kit,
            strategy: #strategy,
            on_duplicate: #on_duplicate,
        }
    };
    let entry = private_at(config, key_span, "business");
    let call = call_entry(key_span, entry, quote!(#call, #body,));
    quote! {
        {
            #store_statements
            let #database = #rt::__private::database_of(&#store);
            #call
        }
    }
}

/// The strategy's own part: `SelectBeforeInsert { target }`, `Optimistic { target, version }`, …
fn strategy(config: &Config, rule: &BusinessRule, database: &Ident) -> TokenStream {
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
            let version = check_at(
                config,
                span,
                "VersionValueArg",
                "version_value",
                quote_spanned!(span=> #database, &(#expr)),
            );
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
