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

/// `rt::__private::<entry>::<generics>(args).await`, with the path and the `.await` spanned at
/// `span`.
///
/// rustc reports an unmet bound of the entry point at the call and again at its `.await`; with
/// both at the one type the bound is about, the two reports are one. Bounds a user can break
/// are therefore either about that type, or checked before the call (see `__private`).
fn call_entry(
    config: &Config,
    span: Span,
    entry: &str,
    generics: Option<TokenStream>,
    args: TokenStream,
) -> TokenStream {
    let rt = respan(config.runtime.to_token_stream(), span);
    let entry = Ident::new(entry, span);
    let generics = generics.map(|generics| quote_spanned!(span=> ::<#generics>));
    let await_ = quote_spanned!(span=> .await);
    quote_spanned!(span=> #rt::__private::#entry #generics (#args) #await_)
}

/// `rt::__private::<item>`, with the runtime's path spanned at `span`: where an unmet bound
/// of that item is reported.
fn private_at(config: &Config, span: Span, item: &str) -> TokenStream {
    let rt = respan(config.runtime.to_token_stream(), span);
    let item = Ident::new(item, span);
    quote_spanned!(span=> #rt::__private::#item)
}

/// `rt::__private::<through>(store)`, spanned at the store: the one place a store of the wrong
/// kind is reported (`claim_store`, `tx_store`, `lock_store`, `token_store`).
fn store_through(config: &Config, through: &str) -> TokenStream {
    let through = private_at(config, config.store.span, through);
    let store = store_argument(&config.store);
    quote_spanned!(config.store.span=> #through(#store))
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
