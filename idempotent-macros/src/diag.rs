//! Error collection shared by the parse, validate and expand stages.
//!
//! Every stage keeps going after a problem so that the user sees all of them
//! in one compile, each at its own span (see `syn::Error::combine`).

use std::fmt::Display;

use proc_macro2::{Ident, Punct, Spacing, Span, TokenStream, TokenTree};

/// An accumulator of `syn::Error`s: push as many as you find, then `finish`.
#[derive(Default)]
pub(crate) struct Errors {
    error: Option<syn::Error>,
}

impl Errors {
    /// Records `error` next to the ones found so far.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.error {
            Some(existing) => existing.combine(error),
            None => self.error = Some(error),
        }
    }

    /// Records an error with `message` at `span`.
    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error with `message` covering the tokens from `start` to `end`.
    pub(crate) fn between(&mut self, start: Span, end: Span, message: impl Display) {
        self.push(error_between(start, end, message));
    }

    /// Whether nothing has been recorded.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.error.is_none()
    }

    /// `Ok(())` when nothing was recorded, else all the errors combined.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// An error covering the source from `start` to `end`.
///
/// `syn::Error::new_spanned` reports from the first to the last token of what
/// it is given, which works on stable (unlike `Span::join`), so hand it two
/// placeholder tokens carrying the two spans.
pub(crate) fn error_between(start: Span, end: Span, message: impl Display) -> syn::Error {
    let mut last = Punct::new(';', Spacing::Alone);
    last.set_span(end);
    let tokens: TokenStream = [
        TokenTree::Ident(Ident::new("x", start)),
        TokenTree::Punct(last),
    ]
    .into_iter()
    .collect();
    syn::Error::new_spanned(tokens, message)
}

/// The candidate closest to `word` by edit distance, if it is close enough to
/// be a likely typo (for "did you mean" hints).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (edit_distance(word, candidate), *candidate))
        .filter(|(distance, candidate)| {
            let allowed = match candidate.chars().count() {
                0..=3 => 1,
                4..=6 => 2,
                _ => 3,
            };
            *distance <= allowed
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let insertion = current[j] + 1;
            let deletion = previous[j + 1] + 1;
            current.push(substitution.min(insertion).min(deletion));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `" (did you mean `x`?)"` when `word` looks like a typo of a candidate, else `""`.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates) {
        Some(candidate) => format!(" (did you mean `{candidate}`?)"),
        None => String::new(),
    }
}
