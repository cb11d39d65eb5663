//! With the `libtorch` feature, binaries and tests find PyTorch's shared libraries at run
//! time without `LD_LIBRARY_PATH`: torch-sys links them from its install folder (which it
//! publishes as `links` metadata) but records no run-time search path.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
