//! Which library runs each of a linear layer's products on this machine, timed once per shape
//! and kept in the user's cache directory, as Burn's autotune keeps its GPU kernels' choices.
//!
//! The first time a process meets a product of a shape, it looks the shape up in
//! `matmul-<machine>.json` in kiln's cache folder: `$KILN_CACHE_DIR`, else `kiln` in the
//! platform's cache directory (`~/.cache/kiln` on Linux). Where the file has no choice for
//! it, both libraries compute the product on random operands of that shape (at most
//! [`MAX_TIMED_ROWS`] rows), alternating, and the faster one is written to the file. A
//! choice's rows are rounded up to a power of two, so that batches of varying length share it.
//!
//! The file is named by the machine (the CPU, its vector extensions, libtorch's thread count),
//! so machines that share a home directory keep one each. A process makes each choice once,
//! after looking in the file again (a process started beside it may have made it meanwhile),
//! and every later process reads it back, so a resumed run multiplies as the run it resumes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::matmul::{Library, Product, Shape};
use crate::files;

/// Rows at which a product is timed at most: the choice settles well before (GFLOP/s change
/// little with more rows), and a GPT-2 head of 8,192 rows would take seconds a call.
const MAX_TIMED_ROWS: i64 = 2048;

/// The library to run `product` of a layer of `shape` on, timed on first use.
pub(super) fn library(product: Product, shape: Shape) -> Library {
    let tuner = TUNER.get_or_init(|| Mutex::new(Tuner::open(cache_file())));
    let mut tuner = tuner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tuner.library(product, shape)
}

/// What this process's linear layers ran on, in a line: `None` before any ran here.
pub(in crate::kernels) fn summary() -> Option<String> {
    let tuner = TUNER.get()?.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let taken = tuner.taken.len();
    let onednn = tuner.taken.values().filter(|&&l| l == Library::OneDnn).count();
    let kept = match &tuner.file {
        Some(file) => format!("kept in {}", file.display()),
        None => "not kept: no cache directory, or it could not be written".to_string(),
    };
    (taken > 0).then(|| {
        format!(
            "MKL for {} of the linear layers' {taken} products, oneDNN for {onednn} (the faster \
             on this machine for each shape; {kept})",
            taken - onednn
        )
    })
}

static TUNER: OnceLock<Mutex<Tuner>> = OnceLock::new();

/// The choices made on this machine, by product and shape.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Choices {
    /// What the file's name stands for, for a reader.
    machine: String,
    choices: BTreeMap<String, Library>,
}

/// The choices of this process, and the file they are kept in.
#[derive(Debug)]
struct Tuner {
    file: Option<PathBuf>,
    choices: Choices,
    /// Whether this process has said that it is timing products.
    announced: bool,
    /// The choices this process has taken, by product and shape (rows rounded as in the
    /// file), so that a step's calls neither format keys nor read the file.
    taken: HashMap<(Product, Shape), Library>,
}

impl Tuner {
    /// The choices in `file`; none where it does not exist yet or cannot be read (said once).
    fn open(file: Option<PathBuf>) -> Self {
        let read = file.as_deref().map(read_choices).unwrap_or(Ok(Choices::default()));
        let choices = read.unwrap_or_else(|e| {
            eprintln!("kiln: warning: {e}: timing the products again and rewriting it");
            Choices::default()
        });
        let choices = Choices { machine: machine(), ..choices };
        Self { file, choices, announced: false, taken: HashMap::new() }
    }

    fn library(&mut self, product: Product, shape: Shape) -> Library {
        let class = Shape { rows: rows_class(shape.rows), ..shape };
        if let Some(&library) = self.taken.get(&(product, class)) {
            return library;
        }
        let library = self.choose(product, shape);
        self.taken.insert((product, class), library);
        library
    }

    /// The file's choice for `product` of `shape`, else the faster one, timed now at `shape`'s
    /// own rows, and kept.
    fn choose(&mut self, product: Product, shape: Shape) -> Library {
        let key = key(product, shape);
        if let Some(&library) = self.choices.choices.get(&key) {
            return library;
        }
        // Another process on this machine (an MPI job's, say) may have timed it meanwhile.
        let kept = self.file.as_deref().and_then(|file| read_choices(file).ok());
        if let Some(&library) = kept.as_ref().and_then(|kept| kept.choices.get(&key)) {
            self.choices.choices.insert(key, library);
            return library;
        }
        if !self.announced {
            self.announced = true;
            let kept = match &self.file {
                Some(file) => format!("kept in {}", file.display()),
                None => "no cache directory: not kept".to_string(),
            };
            eprintln!(
                "kiln: timing MKL against oneDNN for each linear layer's products, once per \
                 shape on this machine ({kept})"
            );
        }
        let library = fastest(product, shape);
        self.choices.choices.insert(key, library);
        self.save();
        library
    }

    /// Writes the choices, with those other processes wrote meanwhile, to the file. Where
    /// that fails, says so once and keeps the choices in memory for the rest of the process.
    fn save(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        // Another process's choices, where the file has any (a broken file was said at open).
        let mut merged = read_choices(file).map(|c| c.choices).unwrap_or_default();
        merged.extend(self.choices.choices.iter().map(|(k, &v)| (k.clone(), v)));
        let choices = Choices { machine: self.choices.machine.clone(), choices: merged };
        let json = serde_json::to_vec_pretty(&choices).unwrap_or_default();
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| files::write_atomic(file, &json));
        if let Err(e) = written {
            eprintln!(
                "kiln: warning: could not keep the matmul choices in {}: {e}; they will be \
                 timed again in the next process",
                file.display()
            );
            self.file = None;
        }
    }
}

/// The choices kept in `file`: none if it does not exist, and an error saying what is wrong
/// where it cannot be read or is not a choices file.
fn read_choices(file: &Path) -> Result<Choices, String> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Choices::default()),
        Err(e) => return Err(format!("could not read {}: {e}", file.display())),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not kiln's matmul choices ({e})", file.display()))
}

/// How a choice is named in the file: `forward 1024x128x384`, `…x65 tied` for a weight stored
/// transposed.
fn key(product: Product, shape: Shape) -> String {
    let tied = if shape.weight_transposed { " tied" } else { "" };
    let rows = rows_class(shape.rows);
    format!("{} {rows}x{}x{}{tied}", product.name(), shape.d_in, shape.d_out)
}

/// `rows` rounded up to a power of two.
fn rows_class(rows: i64) -> i64 {
    (rows.max(1) as u64).next_power_of_two() as i64
}

/// The library that computes `product` of `shape` faster here: the best of three alternating
/// timings each, after one untimed call each. MKL where oneDNN refuses.
fn fastest(product: Product, shape: Shape) -> Library {
    let timed = Shape { rows: shape.rows.min(MAX_TIMED_ROWS), ..shape };
    let (a, b) = product.operands(timed);
    let libraries = [Library::Mkl, Library::OneDnn];
    let mut best = [f64::INFINITY; 2];
    for round in 0..4 {
        for (i, &library) in libraries.iter().enumerate() {
            let start = Instant::now();
            if product.compute(library, &a, &b).is_err() {
                return Library::Mkl;
            }
            if round > 0 {
                best[i] = best[i].min(start.elapsed().as_secs_f64());
            }
        }
    }
    if best[1] < best[0] {
        Library::OneDnn
    } else {
        Library::Mkl
    }
}

/// The file of this machine's choices, if there is a cache directory.
fn cache_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()?.join("kiln"),
    };
    let id = files::sha256_hex(machine().as_bytes());
    Some(dir.join(format!("matmul-{}.json", &id[..16])))
}

/// What the choices depend on: the CPU, its vector extensions and libtorch's threads.
fn machine() -> String {
    format!("{}; libtorch {} threads", crate::kernels::cpu_name(), tch::get_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rows: i64) -> Shape {
        Shape { rows, d_in: 24, d_out: 40, weight_transposed: false }
    }

    #[test]
    fn batches_of_varying_length_share_a_choice() {
        assert_eq!(key(Product::Forward, shape(700)), key(Product::Forward, shape(1024)));
        assert_ne!(key(Product::Forward, shape(700)), key(Product::Forward, shape(1025)));
        let tied = Shape { weight_transposed: true, ..shape(1) };
        assert_eq!(key(Product::InputGradient, tied), "input-gradient 1x24x40 tied");
    }

    /// A choice is timed once, kept, and read back by the next process: the file's choice is
    /// the one taken, even where it is not what timing would pick.
    #[test]
    fn choices_are_kept_and_read_back() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let file = dir.path().join("cache/kiln/matmul-test.json");
        let chosen = Tuner::open(Some(file.clone())).library(Product::Forward, shape(64));
        let kept: Choices = serde_json::from_slice(&std::fs::read(&file).expect("written"))
            .expect("a choices file");
        assert_eq!(kept.choices.get("forward 64x24x40"), Some(&chosen));
        assert_eq!(kept.machine, machine());

        let other = match chosen {
            Library::Mkl => Library::OneDnn,
            Library::OneDnn => Library::Mkl,
        };
        let edited = Choices { choices: [("forward 64x24x40".to_string(), other)].into(), ..kept };
        std::fs::write(&file, serde_json::to_vec(&edited).expect("json")).expect("written");
        assert_eq!(Tuner::open(Some(file)).library(Product::Forward, shape(50)), other);
    }

    /// A choice another process wrote after this one opened the file is taken, not timed
    /// again: processes of one job multiply alike.
    #[test]
    fn a_choice_written_meanwhile_by_another_process_is_taken() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let file = dir.path().join("matmul-test.json");
        let mut early = Tuner::open(Some(file.clone()));
        let mut other = Tuner::open(Some(file.clone()));
        let chosen = other.library(Product::InputGradient, shape(32));
        let flipped = match chosen {
            Library::Mkl => Library::OneDnn,
            Library::OneDnn => Library::Mkl,
        };
        let mut kept = read_choices(&file).expect("a choices file");
        kept.choices.insert("input-gradient 32x24x40".to_string(), flipped);
        std::fs::write(&file, serde_json::to_vec(&kept).expect("json")).expect("written");
        assert_eq!(early.library(Product::InputGradient, shape(32)), flipped);
    }

    /// A cache directory that cannot be made (a file stands in its place) costs one warning
    /// and the keeping, never the run.
    #[test]
    fn an_unwritable_cache_directory_keeps_choices_in_memory() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("kiln"), "a file, not a folder").expect("written");
        let mut tuner = Tuner::open(Some(dir.path().join("kiln/matmul-test.json")));
        let first = tuner.library(Product::Forward, shape(16));
        assert!(tuner.file.is_none(), "the failed write is not tried again for every shape");
        assert_eq!(tuner.library(Product::Forward, shape(16)), first);
    }

    /// A file that is not a choices file (edited by hand, cut short) is timed again and
    /// rewritten, never trusted and never fatal; another process's choices are kept.
    #[test]
    fn a_broken_file_is_timed_again_and_rewritten() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let file = dir.path().join("matmul-test.json");
        for broken in
            ["{\"choices\": {\"forward 64x24x40\": \"blas\"}}", "{\"machine\": \"x\", \"cho"]
        {
            std::fs::write(&file, broken).expect("written");
            let mut tuner = Tuner::open(Some(file.clone()));
            assert!(tuner.choices.choices.is_empty());
            tuner.library(Product::WeightGradient, shape(64));
            let kept = read_choices(&file).expect("rewritten");
            assert!(kept.choices.contains_key("weight-gradient 64x24x40"), "{broken}");
        }
        let mut other_process = Tuner::open(Some(file.clone()));
        other_process.choices.choices.clear();
        other_process.library(Product::Forward, shape(8));
        let kept = read_choices(&file).expect("a choices file");
        assert!(kept.choices.contains_key("weight-gradient 64x24x40"));
        assert!(kept.choices.contains_key("forward 8x24x40"));
    }
}
