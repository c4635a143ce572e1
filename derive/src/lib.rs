//! `#[derive(Parameters)]` for [ndarray-optim](https://docs.rs/ndarray-optim): a struct's
//! fields become the named parameter tensors of a model, which
//! `Optimizer::step_model` steps in one call.
//!
//! Use it through ndarray-optim's `derive` feature, as `ndarray_optim::Parameters`; the code
//! it generates refers to the crate by that name.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Error, Fields, Index, LitStr, Member, Type};

/// Implements `ndarray_optim::model::Parameters` for a struct whose fields are sets of
/// parameter tensors: arrays, structs that derive `Parameters` too, `Vec`s of them, maps,
/// lists of named arrays.
///
/// A tensor's name is its field's name, or the field's position in a tuple struct, followed
/// by the names within the field after a dot: `encoder.layers.0.weight`, as PyTorch's
/// `named_parameters()` writes them. Options, on a field:
///
/// - `#[optim(skip)]`: the field holds no tensors (a hyperparameter, a cache, a flag), and
///   its type need not implement `Parameters`;
/// - `#[optim(rename = "name")]`: the field's part of the names is `name` (which may itself
///   hold dots) instead of the field's name.
///
/// Every field that is not skipped must hold tensors of one element type, the type of the
/// first. A generic struct's type parameters need the bounds that make its fields sets of
/// tensors: `struct Layer<A: Element>` for `Array2<A>` fields, `struct Stack<L: Parameters>`
/// for a `Vec<L>`. The derive refuses, with an error at the spot: enums and unions, a struct without
/// a field to visit, unknown options, a skipped field renamed, an empty name, and two fields
/// of the same name.
#[proc_macro_derive(Parameters, attributes(optim))]
pub fn derive_parameters(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input).unwrap_or_else(Error::into_compile_error).into()
}

/// A field that holds tensors.
struct Tensors<'a> {
    /// How to reach it: `self.#member`.
    member: Member,
    /// Its part of the names.
    name: String,
    ty: &'a Type,
}

/// The impl of `Parameters` for `input`, or the error to show.
fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    if let Some(attr) = input.attrs.iter().find(|attr| attr.path().is_ident("optim")) {
        return Err(Error::new_spanned(
            attr,
            "`#[optim(...)]` goes on fields: `skip` or `rename = \"name\"`",
        ));
    }
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(data) => {
            return Err(Error::new(
                data.enum_token.span,
                "`Parameters` can be derived for structs only: an enum's tensors would change \
                 with its variant",
            ));
        }
        Data::Union(data) => {
            return Err(Error::new(
                data.union_token.span,
                "`Parameters` can be derived for structs only",
            ));
        }
    };
    let tensors = tensor_fields(fields)?;
    let Some(first) = tensors.first() else {
        return Err(Error::new_spanned(
            &input.ident,
            "`Parameters` needs a field that holds tensors: this struct has none that is not \
             `#[optim(skip)]`",
        ));
    };

    let model = quote!(::ndarray_optim::model);
    let first_ty = first.ty;
    let elem = quote!(<#first_ty as #model::Parameters>::Elem);
    let mut visit = Vec::new();
    let mut visit_mut = Vec::new();
    let mut zip = Vec::new();
    for Tensors { member, name, ty } in &tensors {
        // Spanned at the field's type, so that a type that is no `Parameters` is shown there.
        let span = ty.span();
        visit.push(quote_spanned! {span=>
            prefix.with(#name, |prefix| #model::Parameters::visit(&self.#member, prefix, f));
        });
        visit_mut.push(quote_spanned! {span=>
            prefix.with(#name, |prefix| #model::Parameters::visit_mut(&mut self.#member, prefix, f));
        });
        zip.push(quote_spanned! {span=>
            prefix.with(#name, |prefix| {
                #model::Parameters::zip_mut(&mut self.#member, &grads.#member, prefix, f)
            })?;
        });
    }

    let ident = &input.ident;
    // A generic struct's own bounds (`A: Element`, `L: Parameters`) are what make its fields
    // sets of tensors: bounds on the fields' types here would not add to them.
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #model::Parameters for #ident #ty_generics #where_clause {
            type Elem = #elem;

            fn visit(&self, prefix: &mut #model::Prefix, f: &mut #model::Visit<'_, Self::Elem>) {
                #(#visit)*
            }

            fn visit_mut(
                &mut self,
                prefix: &mut #model::Prefix,
                f: &mut #model::VisitMut<'_, Self::Elem>,
            ) {
                #(#visit_mut)*
            }

            fn zip_mut(
                &mut self,
                grads: &Self,
                prefix: &mut #model::Prefix,
                f: &mut #model::VisitPair<'_, Self::Elem>,
            ) -> ::ndarray_optim::Result<()> {
                #(#zip)*
                ::core::result::Result::Ok(())
            }
        }
    })
}

/// The fields to visit, in order, with their names; refuses two fields of one name.
fn tensor_fields(fields: &Fields) -> syn::Result<Vec<Tensors<'_>>> {
    let mut tensors: Vec<Tensors<'_>> = Vec::new();
    for (index, field) in fields.iter().enumerate() {
        let options = FieldOptions::parse(&field.attrs)?;
        if options.skip {
            continue;
        }
        let (member, default_name) = match &field.ident {
            Some(ident) => (Member::Named(ident.clone()), ident.unraw().to_string()),
            None => {
                let member = Member::Unnamed(Index { index: index as u32, span: field.ty.span() });
                (member, index.to_string())
            }
        };
        let (name, span) = match options.rename {
            Some(rename) => (rename.value(), rename.span()),
            None => (default_name, field.span()),
        };
        if tensors.iter().any(|other| other.name == name) {
            return Err(Error::new(span, format!("two fields are named `{name}`")));
        }
        tensors.push(Tensors { member, name, ty: &field.ty });
    }
    Ok(tensors)
}

/// A field's `#[optim(...)]` options.
#[derive(Default)]
struct FieldOptions {
    skip: bool,
    rename: Option<LitStr>,
}

impl FieldOptions {
    fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut options = FieldOptions::default();
        let mut skip_span = None;
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("optim")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("skip") {
                    if options.skip {
                        return Err(meta.error("`skip` is given twice"));
                    }
                    options.skip = true;
                    skip_span = Some(meta.path.span());
                } else if meta.path.is_ident("rename") {
                    if options.rename.is_some() {
                        return Err(meta.error("`rename` is given twice"));
                    }
                    let name: LitStr = meta.value()?.parse()?;
                    if name.value().is_empty() {
                        return Err(Error::new(name.span(), "a tensor name cannot be empty"));
                    }
                    options.rename = Some(name);
                } else {
                    return Err(
                        meta.error("unknown option: `optim` takes `skip` or `rename = \"name\"`")
                    );
                }
                Ok(())
            })?;
        }
        if let (Some(span), Some(_)) = (skip_span, &options.rename) {
            return Err(Error::new(span, "a skipped field has no name to rename"));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    /// The error that deriving for `input` gives.
    fn error(input: syn::DeriveInput) -> String {
        match expand(&input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn refuses_what_has_no_fixed_set_of_tensors() {
        let enum_error = error(syn::parse_quote!(
            enum Model {
                A(Array1<f32>),
            }
        ));
        assert!(enum_error.contains("structs only"), "{enum_error}");
        let union_error = error(syn::parse_quote!(
            union Model {
                a: u32,
            }
        ));
        assert!(union_error.contains("structs only"), "{union_error}");
        for input in [
            syn::parse_quote!(
                struct Model;
            ),
            syn::parse_quote!(
                struct Model {
                    #[optim(skip)]
                    lr: f64,
                }
            ),
        ] {
            let message = error(input);
            assert!(message.contains("needs a field that holds tensors"), "{message}");
        }
    }

    #[test]
    fn refuses_bad_options() {
        let cases: [(syn::DeriveInput, &str); 7] = [
            (
                syn::parse_quote!(
                    struct Model {
                        #[optim(frozen)]
                        w: Array1<f32>,
                    }
                ),
                "unknown option",
            ),
            (
                syn::parse_quote!(
                    struct Model {
                        #[optim(skip, rename = "v")]
                        w: Array1<f32>,
                    }
                ),
                "a skipped field has no name to rename",
            ),
            (
                syn::parse_quote!(
                    struct Model {
                        #[optim(rename = "")]
                        w: Array1<f32>,
                    }
                ),
                "cannot be empty",
            ),
            (
                syn::parse_quote!(
                    struct Model {
                        #[optim(rename = "a", rename = "b")]
                        w: Array1<f32>,
                    }
                ),
                "`rename` is given twice",
            ),
            (
                syn::parse_quote!(
                    struct Model {
                        #[optim(rename = 3)]
                        w: Array1<f32>,
                    }
                ),
                "expected string literal",
            ),
            (
                syn::parse_quote!(
                    #[optim(skip)]
                    struct Model {
                        w: Array1<f32>,
                    }
                ),
                "goes on fields",
            ),
            (
                syn::parse_quote!(
                    struct Model {
                        w: Array1<f32>,
                        #[optim(rename = "w")]
                        v: Array1<f32>,
                    }
                ),
                "two fields are named `w`",
            ),
        ];
        for (input, expected) in cases {
            let message = error(input);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn names_fields_by_name_rename_and_position() {
        let tokens = |input: syn::DeriveInput| expand(&input).unwrap().to_string();
        let named = tokens(syn::parse_quote!(
            struct Model {
                r#type: Array1<f32>,
                #[optim(rename = "head.proj")]
                output: Array2<f32>,
            }
        ));
        assert!(named.contains("\"type\"") && named.contains("\"head.proj\""), "{named}");
        let positional = tokens(syn::parse_quote!(
            struct Pair(Array1<f32>, #[optim(skip)] usize, Array1<f32>);
        ));
        assert!(positional.contains("\"0\"") && positional.contains("\"2\""), "{positional}");
        assert!(!positional.contains("\"1\""), "{positional}");
    }
}
