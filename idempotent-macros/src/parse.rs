//! Stage 1: the attribute's arguments → raw options with spans.
//!
//! This stage only knows the grammar `name = value, ...` where a value is a
//! string literal, `true`/`false` or a bracketed list of string literals. It
//! rejects unknown and duplicated option names; what the values mean is
//! checked by [`crate::validate`].
//!
//! The arguments are split at top-level commas first, so one malformed option
//! does not hide the problems in the others.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::{Ident, LitBool, LitStr, Token};

use crate::diag::{Errors, did_you_mean, error_between};

/// Declares [`OptionName`] with its spelling in the attribute.
macro_rules! option_names {
    ($($variant:ident => $text:literal,)*) => {
        /// The name of an option of `#[idempotent(...)]`.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub(crate) enum OptionName {
            $(
                #[doc = concat!("`", $text, "`")]
                $variant,
            )*
        }

        impl OptionName {
            /// Every option, in the order the documentation lists them.
            pub(crate) const ALL: &'static [OptionName] = &[$(OptionName::$variant,)*];

            /// The option as written in the attribute.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(OptionName::$variant => $text,)*
                }
            }

            /// The option spelled `text`, if there is one.
            pub(crate) fn from_name(text: &str) -> Option<OptionName> {
                match text {
                    $($text => Some(OptionName::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

option_names! {
    Strategy => "strategy",
    Key => "key",
    Store => "store",
    Scope => "scope",
    Name => "name",
    Fingerprint => "fingerprint",
    Lease => "lease",
    Ttl => "ttl",
    Crate => "crate",
    Table => "table",
    Column => "column",
    Version => "version",
    StatusColumn => "status_column",
    From => "from",
    To => "to",
    Done => "done",
    Constraint => "constraint",
    OnBusy => "on_busy",
    OnCancel => "on_cancel",
    OnDuplicate => "on_duplicate",
    Terminal => "terminal",
}

impl OptionName {
    /// All option names, comma-separated, for error messages.
    pub(crate) fn list() -> String {
        Self::ALL
            .iter()
            .map(|name| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An option's value as written.
pub(crate) enum RawValue {
    /// `name = "text"`
    Str(LitStr),
    /// `name = true` / `name = false`
    Bool(LitBool),
    /// `name = ["a", "b"]`
    List {
        /// The whole bracketed list.
        span: Span,
        /// The entries, in order.
        items: Vec<LitStr>,
    },
}

impl RawValue {
    /// Where the value is written.
    pub(crate) fn span(&self) -> Span {
        match self {
            RawValue::Str(lit) => lit.span(),
            RawValue::Bool(lit) => lit.span(),
            RawValue::List { span, .. } => *span,
        }
    }
}

/// One `name = value` option of the attribute.
pub(crate) struct RawOption {
    /// Which option this is.
    pub(crate) name: OptionName,
    /// The option's name as written (its span is the option's position).
    pub(crate) ident: Ident,
    /// The value; `None` when it was malformed (the error is already recorded).
    pub(crate) value: Option<RawValue>,
}

/// The options of one attribute, each present at most once.
#[derive(Default)]
pub(crate) struct RawArgs {
    /// The options in the order written.
    pub(crate) options: Vec<RawOption>,
}

impl RawArgs {
    /// The option `name`, when written (possibly with a malformed value).
    pub(crate) fn get(&self, name: OptionName) -> Option<&RawOption> {
        self.options.iter().find(|option| option.name == name)
    }
}

/// Parses the attribute's arguments, recording every problem in `errors` and
/// returning the options that could be read.
pub(crate) fn parse_args(attr: TokenStream, errors: &mut Errors) -> RawArgs {
    let mut args = RawArgs::default();
    for chunk in split_at_commas(attr) {
        let Some((ident, value)) = parse_chunk(&chunk, errors) else {
            continue;
        };
        let text = ident.unraw().to_string();
        let Some(name) = OptionName::from_name(&text) else {
            let names: Vec<&str> = OptionName::ALL.iter().map(|n| n.as_str()).collect();
            errors.at(
                ident.span(),
                format!(
                    "unknown option `{text}`{}; valid options are: {}",
                    did_you_mean(&text, &names),
                    OptionName::list(),
                ),
            );
            continue;
        };
        if args.get(name).is_some() {
            let end = value.as_ref().map_or(ident.span(), RawValue::span);
            errors.push(error_between(
                ident.span(),
                end,
                format!("duplicate option `{text}`: it is already given above; write it once"),
            ));
            continue;
        }
        args.options.push(RawOption { name, ident, value });
    }
    args
}

/// Splits `tokens` at its top-level commas (commas inside `[...]` stay). A
/// trailing comma is allowed; an empty option (`,,` or a leading comma) comes
/// back as a chunk holding just that comma, so its error can point at it.
fn split_at_commas(tokens: TokenStream) -> Vec<TokenStream> {
    let mut chunks = Vec::new();
    let mut current: Vec<TokenTree> = Vec::new();
    for tree in tokens {
        match tree {
            TokenTree::Punct(ref punct) if punct.as_char() == ',' => {
                if current.is_empty() {
                    chunks.push(TokenStream::from(tree));
                } else {
                    chunks.push(current.drain(..).collect());
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        chunks.push(current.into_iter().collect());
    }
    chunks
}

/// Parses one `name = value` chunk; on failure records why and returns `None`
/// for the name, or the name with `None` for a malformed value.
fn parse_chunk(chunk: &TokenStream, errors: &mut Errors) -> Option<(Ident, Option<RawValue>)> {
    let mut trees = chunk.clone().into_iter();
    if let (Some(TokenTree::Punct(punct)), None) = (trees.next(), trees.next())
        && punct.as_char() == ','
    {
        errors.at(punct.span(), "expected an option before this `,`");
        return None;
    }
    let mut name_result = None;
    let parser = |input: ParseStream| -> syn::Result<Option<RawValue>> {
        let ident = input.call(Ident::parse_any).map_err(|_| {
            syn::Error::new(
                input.span(),
                "expected an option such as `key = \"order.code\"`",
            )
        })?;
        name_result = Some(ident.clone());
        let text = ident.unraw();
        if input.is_empty() {
            return Err(syn::Error::new(
                ident.span(),
                format!("option `{text}` needs a value: write `{text} = \"...\"`"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = parse_value(&text, input)?;
        if !input.is_empty() {
            let rest: TokenStream = input.parse()?;
            return Err(syn::Error::new_spanned(
                rest,
                "unexpected tokens after the value; separate options with `,`",
            ));
        }
        Ok(Some(value))
    };
    match parser.parse2(chunk.clone()) {
        Ok(value) => name_result.map(|ident| (ident, value)),
        Err(error) => {
            errors.push(error);
            name_result.map(|ident| (ident, None))
        }
    }
}

/// Parses the value after `name =`.
fn parse_value(name: &Ident, input: ParseStream) -> syn::Result<RawValue> {
    if input.peek(LitStr) {
        return Ok(RawValue::Str(input.parse()?));
    }
    if input.peek(LitBool) {
        return Ok(RawValue::Bool(input.parse()?));
    }
    if input.peek(syn::token::Bracket) {
        let content;
        let bracket = syn::bracketed!(content in input);
        let mut items = Vec::new();
        while !content.is_empty() {
            if !content.peek(LitStr) {
                let tree: TokenTree = content.parse()?;
                return Err(syn::Error::new(
                    tree.span(),
                    "expected a string literal such as \"order.code\"",
                ));
            }
            items.push(content.parse()?);
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        return Ok(RawValue::List {
            span: bracket.span.join(),
            items,
        });
    }
    if input.is_empty() {
        return Err(input.error(format!("option `{name}` needs a value after `=`")));
    }
    let rest: TokenStream = input.parse()?;
    let mut text = compact(&rest.to_string());
    // A bare number for a duration means nothing without a unit: suggest seconds.
    if matches!(name.to_string().as_str(), "lease" | "ttl")
        && text.bytes().all(|b| b.is_ascii_digit())
    {
        text.push('s');
    }
    Err(syn::Error::new_spanned(
        rest,
        format!("option values are string literals: write `{name} = \"{text}\"`"),
    ))
}

/// Undoes the spacing `TokenStream::to_string` puts around `.` and `::`.
fn compact(text: &str) -> String {
    text.replace(" . ", ".")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" (", "(")
        .replace("( ", "(")
        .replace(" )", ")")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn splits_at_top_level_commas_only() {
        let chunks = split_at_commas(quote!(a = "x", b = ["y", "z"],));
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].to_string(), quote!(b = ["y", "z"]).to_string());
    }

    #[test]
    fn reads_every_value_shape() {
        let mut errors = Errors::default();
        let args = parse_args(
            quote!(key = ["a.b", "c"], fingerprint = false, crate = "rt"),
            &mut errors,
        );
        assert!(errors.is_empty());
        assert!(matches!(
            args.get(OptionName::Key).and_then(|o| o.value.as_ref()),
            Some(RawValue::List { items, .. }) if items.len() == 2
        ));
        assert!(matches!(
            args.get(OptionName::Fingerprint).and_then(|o| o.value.as_ref()),
            Some(RawValue::Bool(b)) if !b.value()
        ));
        assert!(args.get(OptionName::Crate).is_some());
    }

    #[test]
    fn compacts_paths() {
        assert_eq!(compact("order . code"), "order.code");
        assert_eq!(compact("a :: b"), "a::b");
    }
}
