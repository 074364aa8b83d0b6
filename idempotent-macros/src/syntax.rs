//! Small token and syntax-tree helpers shared by the stages: re-spanning (field names apart),
//! the root and last field of a path expression, `impl Trait` detection, identifiers without `r#`.

use proc_macro2::{Group, Spacing, Span, TokenStream, TokenTree};
use syn::{Expr, Ident, Member, UnOp};

/// Sets the span of every token in `tokens` (groups included) to `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                TokenTree::Group(new)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Sets the span of every token in an expression's `tokens` to `span`, like [`respan`], except
/// that field and method names (an identifier or literal right after a `.` that is not part of
/// `..`) get [`field_span`]`(span)`.
///
/// rustc builds a "similar name" suggestion on the span of a field or method name it cannot
/// find; at the whole string literal that suggestion would replace the literal (`key = code`),
/// which is not attribute syntax. A span that resolves at the macro's mixed site is never used
/// for suggestions, yet still points at the literal; field and method lookup ignore that
/// hygiene, so `req.code` still finds `code`. The root keeps the call site, to resolve the
/// user's parameter.
pub(crate) fn respan_expr(tokens: TokenStream, span: Span) -> TokenStream {
    let mut out: Vec<TokenTree> = Vec::new();
    for tree in tokens {
        let after_dot = match out.as_slice() {
            // `..` / `..=`: a range, not a field access.
            [.., TokenTree::Punct(before), TokenTree::Punct(_)]
                if before.as_char() == '.' && before.spacing() == Spacing::Joint =>
            {
                false
            }
            [.., TokenTree::Punct(dot)] => dot.as_char() == '.',
            _ => false,
        };
        let tree = match tree {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), respan_expr(group.stream(), span));
                new.set_span(span);
                TokenTree::Group(new)
            }
            mut other @ (TokenTree::Ident(_) | TokenTree::Literal(_)) if after_dot => {
                other.set_span(field_span(span));
                other
            }
            mut other => {
                other.set_span(span);
                other
            }
        };
        out.push(tree);
    }
    out.into_iter().collect()
}

/// The span of a field or method name written in the literal at `span` (see [`respan_expr`]).
pub(crate) fn field_span(span: Span) -> Span {
    span.resolved_at(Span::mixed_site())
}

/// The spans of the first and last tokens of `tokens` (of a type, say): an expression whose
/// first token carries the first and whose last carries the last covers them all in rustc's
/// messages (stable Rust cannot join spans).
pub(crate) fn ends(tokens: &TokenStream) -> (Span, Span) {
    let mut trees = tokens.clone().into_iter();
    let first = trees
        .next()
        .map_or_else(Span::call_site, |tree| tree.span());
    let last = trees.last().map_or(first, |tree| tree.span());
    (first, last)
}

/// The identifier an expression starts from: `order` in `order.items[0].code()`.
/// Field access, indexing, method calls, parentheses, `&`, `*` and `as` are
/// looked through; anything else has no root.
pub(crate) fn root_ident(expr: &Expr) -> Option<&Ident> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => path.path.get_ident(),
        Expr::Field(field) => root_ident(&field.base),
        Expr::Index(index) => root_ident(&index.expr),
        Expr::MethodCall(call) => root_ident(&call.receiver),
        Expr::Paren(paren) => root_ident(&paren.expr),
        Expr::Group(group) => root_ident(&group.expr),
        Expr::Reference(reference) => root_ident(&reference.expr),
        Expr::Unary(unary) if matches!(unary.op, UnOp::Deref(_)) => root_ident(&unary.expr),
        Expr::Cast(cast) => root_ident(&cast.expr),
        _ => None,
    }
}

/// [`root_ident`] of an expression held as tokens.
pub(crate) fn root_of_tokens(tokens: &TokenStream) -> Option<Ident> {
    let expr: Expr = syn::parse2(tokens.clone()).ok()?;
    root_ident(&expr).cloned()
}

/// The last named field of a field-access path (`order.code` → `code`; a bare
/// parameter is its own last field).
pub(crate) fn last_field(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Field(field) => match &field.member {
            Member::Named(ident) => Some(ident.clone()),
            Member::Unnamed(_) => None,
        },
        Expr::Path(path) => path.path.get_ident().filter(|i| *i != "self").cloned(),
        Expr::Paren(paren) => last_field(&paren.expr),
        Expr::Group(group) => last_field(&group.expr),
        _ => None,
    }
}

/// Whether the tokens contain `impl` (an `impl Trait` cannot go in a turbofish).
pub(crate) fn mentions_impl(tokens: &TokenStream) -> bool {
    tokens.clone().into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => mentions_impl(&group.stream()),
        _ => false,
    })
}

/// Whether the tokens contain the identifier `name` (`r#` ignored), inside groups and macro
/// invocations too.
pub(crate) fn mentions_ident(tokens: &TokenStream, name: &str) -> bool {
    tokens.clone().into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => ident.unraw_string() == name,
        TokenTree::Group(group) => mentions_ident(&group.stream(), name),
        _ => false,
    })
}

/// `ident` without an `r#` prefix, as a string.
pub(crate) trait UnrawString {
    /// The identifier's text without `r#`.
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        let text = self.to_string();
        match text.strip_prefix("r#") {
            Some(stripped) => stripped.to_owned(),
            None => text,
        }
    }
}
