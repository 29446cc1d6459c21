//! `#[derive(ResourceSpec)]`: implements `basalt_resource::ResourceSpec` from one
//! attribute, so that a resource type states its name, namespace, sensitivity, aliases
//! and print columns where it is defined, and nothing is written twice.
//!
//! ```text
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ResourceSpec)]
//! #[resource(
//!     type = "Hostnames.net.basalt.dev",
//!     namespace = namespaces::NETWORK,
//!     aliases("hn"),
//!     column("Hostname", "hostname"),
//!     column("Source", "source"),
//! )]
//! pub struct HostnameSpec { ... }
//! ```
//!
//! `sensitive` marks a type whose resources only `os:admin` may read.

use proc_macro::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, DeriveInput, Expr, LitStr, Token};

#[proc_macro_derive(ResourceSpec, attributes(resource))]
pub fn derive_resource_spec(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Attributes {
    type_name: Option<LitStr>,
    namespace: Option<Expr>,
    sensitive: bool,
    aliases: Vec<LitStr>,
    columns: Vec<(LitStr, LitStr)>,
}

fn parse(input: &DeriveInput) -> syn::Result<Attributes> {
    let mut a = Attributes::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("resource")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type") {
                a.type_name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("namespace") {
                a.namespace = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("sensitive") {
                a.sensitive = true;
            } else if meta.path.is_ident("aliases") {
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                a.aliases.extend(list);
            } else if meta.path.is_ident("column") {
                let content;
                syn::parenthesized!(content in meta.input);
                let name: LitStr = content.parse()?;
                content.parse::<Token![,]>()?;
                let path: LitStr = content.parse()?;
                a.columns.push((name, path));
            } else {
                return Err(meta.error(
                    "expected type = \"...\", namespace = CONST or \"...\", sensitive, aliases(...) or column(\"Name\", \"path\")",
                ));
            }
            Ok(())
        })?;
    }
    Ok(a)
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let a = parse(input)?;
    let name = &input.ident;
    let missing =
        |what: &str| syn::Error::new_spanned(name, format!("#[resource({what} = ...)] is missing"));
    let type_name = a.type_name.ok_or_else(|| missing("type"))?;
    let namespace = a.namespace.ok_or_else(|| missing("namespace"))?;
    let sensitive = a.sensitive;
    let aliases = &a.aliases;
    let columns = a.columns.iter().map(|(name, path)| {
        quote! { ::basalt_resource::Column { name: #name, path: #path } }
    });
    Ok(quote! {
        impl ::basalt_resource::ResourceSpec for #name {
            const TYPE: &'static str = #type_name;
            const DEFAULT_NAMESPACE: &'static str = #namespace;
            const SENSITIVE: bool = #sensitive;
            const ALIASES: &'static [&'static str] = &[#(#aliases),*];
            const PRINT_COLUMNS: &'static [::basalt_resource::Column] = &[#(#columns),*];
        }
    })
}
