//! Stage 3: a validated [`Config`] + the function → the wrapper's tokens.
//!
//! [`expand`] drives the three stages. Expansion itself cannot fail: every user-facing
//! error is raised by [`crate::validate`], and the configuration carries exactly what each
//! family needs. The code of each family is in its own module; the pieces below are shared.

mod business;
mod replaying;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{AttrStyle, Ident, ItemFn};

use crate::diag::Errors;
use crate::fallback::{not_a_function, original_with_errors, strip_injected_attrs};
use crate::model::{Config, Family, Injected, Store, StoreKind};
use crate::parse;
use crate::syntax::respan;
use crate::validate;

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
    match validate::validate(&args, &func, errors) {
        Ok(config) => expand_config(&config, &func),
        Err(error) => original_with_errors(func, &error),
    }
}

/// The wrapper for a validated configuration.
fn expand_config(config: &Config, func: &ItemFn) -> TokenStream {
    let body = match &config.family {
        Family::Replaying(replaying) => replaying::expand(config, replaying, func),
        Family::Business(business) => business::expand(config, business, func),
    };
    wrapper(func, config, body)
}

/// `<entry>(args).await`, with the `.await` spanned at `span` like `entry`.
///
/// The entry points' own bounds always hold once the checks (see `__private::checks`) passed,
/// and a check that failed leaves nothing of the wrong type behind; spanning the call at one
/// token keeps even rustc's own errors about it (the call and its `.await`) one report.
fn call_entry(span: Span, entry: TokenStream, args: TokenStream) -> TokenStream {
    let await_ = quote_spanned!(span=> .await);
    quote_spanned!(span=> #entry (#args) #await_)
}

/// `rt::__private::<item>`, with the runtime's path spanned at `span`: where an unmet bound
/// of that item is reported.
fn private_at(config: &Config, span: Span, item: &str) -> TokenStream {
    let rt = respan(config.runtime.to_token_stream(), span);
    let item = Ident::new(item, span);
    quote_spanned!(span=> #rt::__private::#item)
}

/// `rt::__private::<Trait>::<method>(args)`, all spanned at `span`: a check (see
/// `__private::checks`), whose one error is reported there.
fn check_at(
    config: &Config,
    span: Span,
    check: &str,
    method: &str,
    args: TokenStream,
) -> TokenStream {
    let check = private_at(config, span, check);
    let method = Ident::new(method, span);
    quote_spanned!(span=> #check::#method(#args))
}

/// The store seen as the strategy needs it, checked once at `store` by its store-argument
/// trait: `rt::__private::AsClaimStore::as_claim_store(&store)` (`AsLockStore`,
/// `AsTokenStore`). A store of the wrong kind comes back as a type with no value, which rustc
/// checks no further.
fn store_through(config: &Config, check: &str, method: &str) -> TokenStream {
    check_at(
        config,
        config.store.span,
        check,
        method,
        store_argument(&config.store),
    )
}

/// The statements that bind a `#[tx]` strategy's store to a hygienic local, checked twice: as
/// a transactional store at `store` (`IntoTxStore`), and against the `#[tx]` parameter's type
/// at that type (`TxParam`: "the store opens `SqliteConnection` transactions, so `#[tx]` must
/// be `&mut SqliteConnection`"). Either check that fails leaves the local without a type, so
/// the body's `let tx: Type = …` is not reported again as mismatched.
fn tx_store_statements(config: &Config, tx: &Injected) -> (TokenStream, Ident) {
    let store = store_through(config, "IntoTxStore", "into_tx_store");
    let ty = &tx.ty;
    let ty_span = ty.span();
    let local = Ident::new("__idempotent_store", Span::mixed_site().located_at(ty_span));
    let connection = Ident::new(
        "__idempotent_connection",
        Span::mixed_site().located_at(ty_span),
    );
    let connection_of = private_at(config, ty_span, "connection_of");
    // All at the type's first token: the check's error and rustc's about its result (a
    // projection without value) then coincide and are reported once. (Spread over the whole
    // type, they land at different spans and are reported twice.)
    let tx_param = private_at(config, ty_span, "TxParam");
    let method = Ident::new("tx_param", ty_span);
    let checked = quote_spanned! {ty_span=>
        <_ as #tx_param<#ty, _>>::#method(#local, #connection)
    };
    (
        quote! {
            let #local = #store;
            let #connection = #connection_of(&#local);
            let #local = #checked;
        },
        local,
    )
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
/// `let mut? name: Type = [*]__idempotent_<name>;` (`*` when the runtime lends the value by
/// `&mut`), spanned at `Type`, so a parameter of the wrong type is one "mismatched types"
/// error at that type.
fn injected_binding(injected: &Injected, deref: bool) -> (TokenStream, TokenStream) {
    let (mutability, ident, ty) = (&injected.mutability, &injected.ident, &injected.ty);
    let name = format!(
        "__idempotent_{}",
        ident.to_string().trim_start_matches("r#")
    );
    let param = Ident::new(&name, Span::mixed_site());
    let param_at_ty = Ident::new(&name, Span::mixed_site().located_at(ty.span()));
    let deref = deref.then(|| quote_spanned!(ty.span()=> *));
    let bind = quote_spanned!(ty.span()=> let #mutability #ident: #ty = #deref #param_at_ty;);
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
    let mut sig = func.sig.clone();
    sig.inputs = std::mem::take(&mut sig.inputs)
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !config.injected.contains(index))
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

/// The body with the injected parameter's binding first: `{ let tx: &mut Conn = …; STMTS }`.
/// The user's statements are spliced rather than nested (`{ bind { STMTS } }`), so a one-line
/// body draws no `unused_braces` warning at the user's braces.
pub(super) fn bound_block(bind: &TokenStream, block: &syn::Block) -> TokenStream {
    let stmts = &block.stmts;
    quote_spanned!(block.brace_token.span.join()=> { #bind #(#stmts)* })
}
