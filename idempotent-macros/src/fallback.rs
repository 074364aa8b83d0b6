//! What the attribute emits when it cannot expand: the function unchanged (minus its
//! `#[tx]`/`#[fence]` markers) next to the errors, so that only the attribute's errors are
//! reported and not a cascade of "function not found" ones.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, quote};
use syn::{AttrStyle, FnArg, ItemFn, Pat, Signature};

use crate::model::InjectKind;
use crate::syntax::mentions_impl;

/// The item unchanged plus an error saying where the attribute goes.
pub(crate) fn not_a_function(item: TokenStream, error: &syn::Error) -> TokenStream {
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
pub(crate) fn original_with_errors(func: ItemFn, error: &syn::Error) -> TokenStream {
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
                        && !mentions_impl(&typed.ty.to_token_stream()) =>
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
pub(crate) fn strip_injected_attrs(sig: &mut Signature) {
    for arg in &mut sig.inputs {
        let attrs = match arg {
            FnArg::Receiver(receiver) => &mut receiver.attrs,
            FnArg::Typed(typed) => &mut typed.attrs,
        };
        attrs.retain(|attr| InjectKind::of(attr).is_none());
    }
}
