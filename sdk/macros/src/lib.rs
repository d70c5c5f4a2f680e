//! The `#[plugin]` attribute of `taskhost-sdk`. Use it through
//! `taskhost_sdk::plugin`; this crate is an implementation detail.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, parse_macro_input};

/// Turns `fn NAME(input: I) -> R` into the plugin's exported `run`.
/// See `taskhost_sdk::plugin` for the documentation.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[taskhost_sdk::plugin] takes no arguments").to_compile_error().into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(&func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

const SHAPE: &str = "expected `fn NAME(input: I) -> R`, where I is Vec<u8>, String or Json<T> \
                     and R is Vec<u8>, String, Json<T>, () or a Result of those";

fn expand(func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new(
            token.span(),
            format!("#[taskhost_sdk::plugin] functions cannot be async: {SHAPE}"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("#[taskhost_sdk::plugin] functions cannot be generic: {SHAPE}"),
        ));
    }
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!("#[taskhost_sdk::plugin] functions take exactly one argument, found {}: {SHAPE}", sig.inputs.len()),
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new(
            receiver.span(),
            format!("#[taskhost_sdk::plugin] must be a free function, not a method: {SHAPE}"),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(variadic.span(), SHAPE));
    }
    let name = &sig.ident;
    let Some(FnArg::Typed(arg)) = sig.inputs.first() else {
        return Err(syn::Error::new(sig.inputs.span(), SHAPE));
    };
    let input_ty = &arg.ty;
    let output_ty = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    // Each conversion carries the span of its own type, so a wrong argument
    // or return type is reported once, where it was written.
    let from_input = quote::quote_spanned! {input_ty.span()=>
        <#input_ty as ::taskhost_sdk::FromInput>::from_input(input)
    };
    let into_result = quote::quote_spanned! {output_ty.span()=>
        <#output_ty as ::taskhost_sdk::IntoTaskResult>::into_task_result(output)
    };
    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct __taskhost_plugin;

        impl ::taskhost_sdk::__private::Guest for __taskhost_plugin {
            fn run(
                input: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::taskhost_sdk::__private::TaskError> {
                let input = #from_input.map_err(::taskhost_sdk::__private::task_error)?;
                let output: #output_ty = #name(input);
                #into_result.map_err(::taskhost_sdk::__private::task_error)
            }
        }

        ::taskhost_sdk::__private::__export_task!(__taskhost_plugin with_types_in ::taskhost_sdk::__private);
    })
}
