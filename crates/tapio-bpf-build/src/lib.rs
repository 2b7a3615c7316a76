//! Build-script helper for tapio collectors.
//!
//! A collector crate that ships a BPF object keeps its `build.rs` to a few
//! lines:
//!
//! ```no_run
//! // build.rs of a collector crate: the body of `fn main`
//! if let Err(err) = tapio_bpf_build::Skeleton::new("kernel", "src/bpf/kernel.bpf.c").build() {
//!     panic!("building the kernel BPF object failed: {err}");
//! }
//! ```
//!
//! and includes the generated skeleton with
//! `include!(concat!(env!("OUT_DIR"), "/kernel.skel.rs"))`.
//!
//! What [`Skeleton::build`] does:
//!
//! 1. Writes `vmlinux.h` into `OUT_DIR`, generated from the running kernel's
//!    BTF (`/sys/kernel/btf/vmlinux`) with libbpf's `btf_dump` API, so neither
//!    `bpftool` nor a committed multi-megabyte header is needed. Set
//!    [`VMLINUX_ENV`] (`TAPIO_VMLINUX_H`) to the path of an existing header to
//!    use it instead (cross builds, build machines without BTF), or
//!    [`BTF_ENV`] (`TAPIO_BTF`) to read BTF from another file.
//! 2. Writes the shared tapio headers (`tapio/common.h`: event ring buffer,
//!    per-CPU drop counter, the one reserve/submit/output path with its
//!    wake-up policy, record header) next to it.
//! 3. Compiles the BPF C source with clang through `libbpf-cargo` (CO-RE:
//!    the object relocates against the BTF of whatever kernel loads it) and
//!    generates `<name>.skel.rs`.
//!
//! An object may be split into headers of its own (the kernel collector's
//! `kernel/records.h`, `kernel/process.h`, ...), included relative to the
//! source: `#include "kernel/records.h"` from `src/bpf/kernel.bpf.c` reads
//! `src/bpf/kernel/records.h`. The build reruns when any `.c` or `.h` file
//! under the source's directory changes. For the headers to reach a
//! packaged crate they must live inside it (the repository's collector
//! crates symlink their source and its header directory from `bpf/` into
//! `src/bpf/`; `cargo package` copies what the links point to).
//!
//! Prerequisites on the build machine: `clang` (override with `CLANG`),
//! and for the default `vmlinux.h` a kernel with `CONFIG_DEBUG_INFO_BTF`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::fs;
use std::path::{Path, PathBuf};

/// Environment variable naming a `vmlinux.h` to use instead of generating one.
pub const VMLINUX_ENV: &str = "TAPIO_VMLINUX_H";
/// Environment variable naming a BTF file to generate `vmlinux.h` from
/// (default `/sys/kernel/btf/vmlinux`).
pub const BTF_ENV: &str = "TAPIO_BTF";
/// Where the running kernel exposes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The shared headers, embedded so that they reach packaged collector crates.
const SHARED_HEADERS: &[(&str, &str)] = &[
    ("tapio/common.h", include_str!("../include/tapio/common.h")),
    ("tapio/prefix.h", include_str!("../include/tapio/prefix.h")),
];

/// Why building a BPF skeleton failed. `Display` names the failed step;
/// the cause is in `source()`, and [`BuildError::chain`] prints both.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A variable cargo sets for build scripts is missing: not run from `build.rs`.
    #[error("environment variable {0} is not set; call tapio-bpf-build from a build script")]
    NotInBuildScript(&'static str),
    /// The `vmlinux.h` named by [`VMLINUX_ENV`] could not be read.
    #[error("cannot read {VMLINUX_ENV}={path}")]
    VmlinuxOverride {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel BTF could not be parsed.
    #[error(
        "cannot parse BTF from {path} (errno {errno}); the kernel needs CONFIG_DEBUG_INFO_BTF, \
         or set {VMLINUX_ENV} to a vmlinux.h"
    )]
    Btf {
        /// The BTF file.
        path: PathBuf,
        /// The errno libbpf reported.
        errno: i32,
    },
    /// Dumping a BTF type as C failed.
    #[error("dumping BTF type {type_id} as C failed (errno {errno})")]
    Dump {
        /// The type id that failed.
        type_id: u32,
        /// The errno libbpf reported.
        errno: i32,
    },
    /// Writing a generated file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// clang or the skeleton generator failed.
    #[error("compiling {source_path} or generating its skeleton failed: {message}")]
    Compile {
        /// The BPF source.
        source_path: PathBuf,
        /// libbpf-cargo's error chain, including clang's diagnostics.
        message: String,
    },
}

impl BuildError {
    /// The message followed by each cause, joined by `": "`: what a build
    /// script prints when it fails.
    ///
    /// ```
    /// let err = tapio_bpf_build::BuildError::Write {
    ///     path: "/x/vmlinux.h".into(),
    ///     source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    /// };
    /// assert_eq!(err.to_string(), "cannot write /x/vmlinux.h");
    /// assert_eq!(err.chain(), "cannot write /x/vmlinux.h: permission denied");
    /// ```
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            out.push_str(": ");
            out.push_str(&err.to_string());
            cause = err.source();
        }
        out
    }
}

/// One BPF object to compile into a Rust skeleton.
#[derive(Debug, Clone)]
pub struct Skeleton {
    name: String,
    source: PathBuf,
    clang_args: Vec<String>,
}

impl Skeleton {
    /// A skeleton named `name` (output `<name>.skel.rs`) built from `source`,
    /// a path relative to the crate's manifest directory.
    pub fn new(name: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            clang_args: Vec::new(),
        }
    }

    /// Extra clang arguments (for example `-DTAPIO_FEATURE=1`).
    pub fn clang_arg(mut self, arg: impl Into<String>) -> Self {
        self.clang_args.push(arg.into());
        self
    }

    /// Generate headers, compile the object and write the skeleton into
    /// `OUT_DIR`. Prints the `cargo:rerun-if-*` lines a build script needs.
    pub fn build(self) -> Result<PathBuf, BuildError> {
        let out_dir = PathBuf::from(
            std::env::var_os("OUT_DIR").ok_or(BuildError::NotInBuildScript("OUT_DIR"))?,
        );
        let manifest_dir = PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .ok_or(BuildError::NotInBuildScript("CARGO_MANIFEST_DIR"))?,
        );
        let include_dir = out_dir.join("tapio-bpf-include");
        write_headers(&include_dir)?;

        let source = manifest_dir.join(&self.source);
        println!("cargo:rerun-if-changed={}", source.display());
        if let Some(dir) = source.parent() {
            for file in bpf_sources(dir).into_iter().filter(|f| *f != source) {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
        println!("cargo:rerun-if-env-changed={VMLINUX_ENV}");
        println!("cargo:rerun-if-env-changed={BTF_ENV}");
        println!("cargo:rerun-if-env-changed=CLANG");

        let skel = out_dir.join(format!("{}.skel.rs", self.name));
        let obj = out_dir.join(format!("{}.bpf.o", self.name));
        let mut args = vec![
            "-I".to_string(),
            include_dir.display().to_string(),
            "-Wall".to_string(),
            "-Wno-unused-function".to_string(),
        ];
        args.extend(self.clang_args);
        let mut builder = libbpf_cargo::SkeletonBuilder::new();
        builder.source(&source).obj(&obj).clang_args(args);
        if let Some(clang) = std::env::var_os("CLANG") {
            builder.clang(clang);
        }
        builder
            .build_and_generate(&skel)
            .map_err(|err| BuildError::Compile {
                source_path: source.clone(),
                message: format!("{err:#}"),
            })?;
        Ok(skel)
    }
}

/// The `.c` and `.h` files under `dir` (following symbolic links, sorted),
/// which the source in `dir` may include: a change to any of them reruns
/// the build.
fn bpf_sources(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // `metadata` follows links: a linked header directory is walked.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < 4 {
                    walk(&path, depth + 1, out);
                }
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    out.sort();
    out
}

/// Write `vmlinux.h` and the shared tapio headers into `dir`.
pub fn write_headers(dir: &Path) -> Result<(), BuildError> {
    let write = |path: PathBuf, contents: &[u8]| -> Result<(), BuildError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| BuildError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        // Leave an identical file untouched so clang's outputs stay fresh.
        if fs::read(&path).ok().as_deref() == Some(contents) {
            return Ok(());
        }
        fs::write(&path, contents).map_err(|source| BuildError::Write { path, source })
    };
    for (name, contents) in SHARED_HEADERS {
        write(dir.join(name), contents.as_bytes())?;
    }
    let vmlinux = dir.join("vmlinux.h");
    match std::env::var_os(VMLINUX_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            let contents =
                fs::read(&path).map_err(|source| BuildError::VmlinuxOverride { path, source })?;
            write(vmlinux, &contents)
        }
        None => {
            let btf = std::env::var_os(BTF_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(KERNEL_BTF));
            println!("cargo:rerun-if-changed={}", btf.display());
            generate_vmlinux_h(&btf, &vmlinux)
        }
    }
}

unsafe extern "C" {
    // The `va_list` libbpf hands to the printf callback is forwarded untouched,
    // with the very type bindgen gave the callback, so the ABI matches.
    fn vfprintf(
        stream: *mut libc::FILE,
        format: *const c_char,
        args: *mut libbpf_sys::__va_list_tag,
    ) -> c_int;
}

unsafe extern "C" fn print_to_file(
    ctx: *mut c_void,
    fmt: *const c_char,
    args: *mut libbpf_sys::__va_list_tag,
) {
    // SAFETY: `ctx` is the FILE* opened by `generate_vmlinux_h` and stays
    // open until after `btf_dump__free`; `fmt`/`args` come from libbpf.
    unsafe {
        vfprintf(ctx.cast(), fmt, args);
    }
}

const VMLINUX_PROLOGUE: &str = "\
/* Generated by tapio-bpf-build from kernel BTF. Do not edit. */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
#endif

";

const VMLINUX_EPILOGUE: &str = "
#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute pop
#endif

#endif /* __VMLINUX_H__ */
";

/// Generate a C header with every type of the BTF in `btf_path`, like
/// `bpftool btf dump file <btf> format c`.
pub fn generate_vmlinux_h(btf_path: &Path, out: &Path) -> Result<(), BuildError> {
    let tmp = out.with_extension("h.tmp");
    let c_btf =
        CString::new(btf_path.as_os_str().as_encoded_bytes()).map_err(|_| BuildError::Btf {
            path: btf_path.to_path_buf(),
            errno: libc::EINVAL,
        })?;
    let c_tmp =
        CString::new(tmp.as_os_str().as_encoded_bytes()).map_err(|_| BuildError::Write {
            path: tmp.clone(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
    let write_err = |path: &Path| BuildError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::last_os_error(),
    };

    // SAFETY: plain libbpf/libc FFI. Every pointer is checked before use and
    // freed exactly once on every path below.
    unsafe {
        let btf = libbpf_sys::btf__parse(c_btf.as_ptr(), std::ptr::null_mut());
        let btf_errno = libbpf_sys::libbpf_get_error(btf as *const c_void);
        if btf.is_null() || btf_errno != 0 {
            return Err(BuildError::Btf {
                path: btf_path.to_path_buf(),
                errno: (-btf_errno) as i32,
            });
        }
        let file = libc::fopen(c_tmp.as_ptr(), c"w".as_ptr());
        if file.is_null() {
            libbpf_sys::btf__free(btf);
            return Err(write_err(&tmp));
        }
        libc::fputs(
            CString::new(VMLINUX_PROLOGUE).unwrap_or_default().as_ptr(),
            file,
        );
        let dump =
            libbpf_sys::btf_dump__new(btf, Some(print_to_file), file.cast(), std::ptr::null());
        let mut result = Ok(());
        if dump.is_null() {
            result = Err(BuildError::Btf {
                path: btf_path.to_path_buf(),
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        } else {
            let count = libbpf_sys::btf__type_cnt(btf);
            for type_id in 1..count {
                let rc = libbpf_sys::btf_dump__dump_type(dump, type_id);
                if rc < 0 {
                    result = Err(BuildError::Dump {
                        type_id,
                        errno: -rc,
                    });
                    break;
                }
            }
            libbpf_sys::btf_dump__free(dump);
        }
        libc::fputs(
            CString::new(VMLINUX_EPILOGUE).unwrap_or_default().as_ptr(),
            file,
        );
        let closed = libc::fclose(file);
        libbpf_sys::btf__free(btf);
        result?;
        if closed != 0 {
            return Err(write_err(&tmp));
        }
    }
    // Keep an unchanged header's mtime so dependants do not rebuild.
    if fs::read(&tmp).ok() == fs::read(out).ok() {
        let _ = fs::remove_file(&tmp);
        return Ok(());
    }
    fs::rename(&tmp, out).map_err(|source| BuildError::Write {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_vmlinux_h_from_kernel_btf() {
        if !Path::new(KERNEL_BTF).exists() {
            assert!(
                std::env::var("TAPIO_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{KERNEL_BTF} missing but TAPIO_REQUIRE_PRIVILEGED=1"
            );
            eprintln!("skipping: {KERNEL_BTF} not present");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tapio-bpf-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("vmlinux.h");
        generate_vmlinux_h(Path::new(KERNEL_BTF), &out).expect("generate");
        let text = std::fs::read_to_string(&out).expect("read header");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(text.starts_with("/* Generated by tapio-bpf-build"));
        assert!(text.contains("struct task_struct {"), "task_struct missing");
        assert!(text.contains("preserve_access_index"));
        assert!(text.trim_end().ends_with("#endif /* __VMLINUX_H__ */"));
    }

    #[test]
    fn bpf_sources_follow_linked_header_dirs() {
        let dir = std::env::temp_dir().join(format!("tapio-bpf-sources-{}", std::process::id()));
        let real = dir.join("real");
        let src = dir.join("src");
        std::fs::create_dir_all(&real).expect("real dir");
        std::fs::create_dir_all(&src).expect("src dir");
        std::fs::write(real.join("records.h"), "").expect("header");
        std::fs::write(real.join("notes.txt"), "").expect("other file");
        std::fs::write(src.join("obj.bpf.c"), "").expect("source");
        std::os::unix::fs::symlink(&real, src.join("obj")).expect("link");
        let found = bpf_sources(&src);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(
            found,
            vec![src.join("obj").join("records.h"), src.join("obj.bpf.c")]
        );
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = generate_vmlinux_h(
            Path::new("/nonexistent/btf"),
            &std::env::temp_dir().join("tapio-never-written.h"),
        )
        .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/btf"), "{msg}");
        assert!(msg.contains("TAPIO_VMLINUX_H"), "{msg}");
    }
}
