//! Kernel modules: the image lists the ones the node loads (`/etc/basalt/modules`) and
//! carries a `modules.dep` for just those and their dependencies; each is loaded after
//! what it depends on, with `finit_module`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use basalt_sys::Sys;

use crate::BootError;

/// `modules.dep`: for each module (by name), its file and the modules it needs.
#[derive(Debug, Default)]
pub struct ModuleDeps {
    modules: BTreeMap<String, (PathBuf, Vec<String>)>,
}

/// A module's name from its file (`hw_random/virtio-rng.ko` is `virtio_rng`): the kernel
/// treats `-` and `_` in names alike.
fn name_of(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parses `modules.dep` (`path.ko: dep.ko dep.ko ...` a line, paths relative to the
    /// modules directory). `source` names the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, BootError> {
        let mut modules = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((file, deps)) = line.split_once(':') else {
                return Err(BootError::ModulesDep {
                    path: source.to_path_buf(),
                    line: index + 1,
                    reason: "no ':' after the module's file".into(),
                });
            };
            let file = file.trim();
            if file.is_empty() || !file.ends_with(".ko") {
                return Err(BootError::ModulesDep {
                    path: source.to_path_buf(),
                    line: index + 1,
                    reason: format!("{file:?} is not a module file (.ko)"),
                });
            }
            let deps = deps.split_whitespace().map(name_of).collect();
            modules.insert(name_of(file), (PathBuf::from(file), deps));
        }
        Ok(ModuleDeps { modules })
    }

    /// The files to load for `wanted`, each after the modules it needs, none twice.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<PathBuf>, BootError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(
                &name.replace('-', "_"),
                &mut Vec::new(),
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    /// [`ModuleDeps::load_order`] in levels: each module in a level after every one it
    /// depends on, which are in earlier levels.
    pub fn load_levels(&self, wanted: &[String]) -> Result<Vec<Vec<PathBuf>>, BootError> {
        let mut level_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut levels: Vec<Vec<PathBuf>> = Vec::new();
        for file in self.load_order(wanted)? {
            let name = name_of(&file.to_string_lossy());
            let level = self
                .modules
                .get(&name)
                .and_then(|(_, deps)| deps.iter().filter_map(|d| level_of.get(d)).max())
                .map_or(0, |deepest| deepest + 1);
            level_of.insert(name, level);
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            if let Some(files) = levels.get_mut(level) {
                files.push(file);
            }
        }
        Ok(levels)
    }

    fn visit(
        &self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), BootError> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            path.push(name.to_string());
            return Err(BootError::ModuleCycle(path.join(" -> ")));
        }
        let (file, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| BootError::UnknownModule(name.to_string()))?;
        path.push(name.to_string());
        for dep in deps {
            self.visit(dep, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(file.clone());
        Ok(())
    }
}

/// Loads the modules the image lists (`list`: a name a line, `#` comments) from
/// `modules_dir` (`/lib/modules/<release>`), in dependency order. A module the kernel
/// already has is not an error. Returns how many were loaded.
pub fn load_listed(sys: &dyn Sys, modules_dir: &Path, list: &Path) -> Result<usize, BootError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| BootError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let wanted: Vec<String> = read(list)?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let dep_file = modules_dir.join("modules.dep");
    let deps = ModuleDeps::parse(&read(&dep_file)?, &dep_file)?;
    // Modules whose dependencies are all loaded load side by side (the kernel checks each
    // one's signature: CPU work, slow without KVM).
    let mut loaded = 0;
    for level in deps.load_levels(&wanted)? {
        let results: Vec<(PathBuf, Result<(), basalt_sys::SysError>)> = std::thread::scope(
            |scope| {
                let loads: Vec<_> = level
                .iter()
                .map(|file| {
                    let path = modules_dir.join(file);
                    scope.spawn(move || {
                        let started = std::time::Instant::now();
                        let result = sys.load_module(&path, "");
                        tracing::debug!(module = %path.display(), elapsed = ?started.elapsed(), "module loaded");
                        (path, result)
                    })
                })
                .collect();
                loads
                    .into_iter()
                    .filter_map(|load| load.join().ok())
                    .collect()
            },
        );
        for (path, result) in results {
            match result {
                Ok(()) => loaded += 1,
                Err(e) if e.kind() == Some(std::io::ErrorKind::AlreadyExists) => {}
                Err(source) => return Err(BootError::Module { path, source }),
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| name_of(&f.to_string_lossy()))
            .collect()
    }

    #[test]
    fn each_module_comes_after_its_dependencies_and_none_twice() {
        let deps = ModuleDeps::parse(DEP, Path::new("modules.dep")).unwrap();
        let order = deps
            .load_order(&[
                "virtio_pci".into(),
                "virtio_blk".into(),
                "virtio-rng".into(),
            ])
            .unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "virtio_rng"
            ]
        );
    }

    #[test]
    fn levels_put_each_module_after_its_dependencies() {
        let deps = ModuleDeps::parse(DEP, Path::new("modules.dep")).unwrap();
        let levels = deps
            .load_levels(&["virtio_pci".into(), "virtio_blk".into()])
            .unwrap();
        let levels: Vec<Vec<String>> = levels.iter().map(|l| names(l)).collect();
        assert_eq!(
            levels,
            [
                vec!["virtio_pci_modern_dev", "virtio_ring", "virtio"],
                vec!["virtio_pci", "virtio_blk"]
            ]
        );
    }

    #[test]
    fn unknown_modules_cycles_and_garbage_are_errors_naming_them() {
        let deps = ModuleDeps::parse(DEP, Path::new("modules.dep")).unwrap();
        let error = deps.load_order(&["wireguard".into()]).unwrap_err();
        assert!(error.to_string().contains("wireguard"), "{error}");

        let cycle = ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n", Path::new("m")).unwrap();
        let error = cycle.load_order(&["a".into()]).unwrap_err().to_string();
        assert!(error.contains("a -> b -> a"), "{error}");

        let error = ModuleDeps::parse("fine.ko:\nno colon here\n", Path::new("/x/modules.dep"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/x/modules.dep") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn loads_the_listed_modules_in_order_and_tolerates_builtin_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let list = dir.path().join("list");
        std::fs::write(&list, "# comment\nvirtio_blk\n\n").unwrap();
        let sys = Recording::new();
        assert_eq!(load_listed(&sys, dir.path(), &list).unwrap(), 3);
        let loaded: Vec<_> = sys
            .calls()
            .into_iter()
            .map(|call| match call {
                Call::LoadModule { path, .. } => path,
                other => panic!("unexpected call {other:?}"),
            })
            .collect();
        // The two it depends on side by side, then it.
        let mut first = names(&loaded[..2]);
        first.sort();
        assert_eq!(first, ["virtio", "virtio_ring"]);
        assert_eq!(names(&loaded[2..]), ["virtio_blk"]);
        assert!(loaded[0].starts_with(dir.path()));

        let builtin = Recording::new();
        builtin.fail_with("load_module", std::io::ErrorKind::AlreadyExists);
        assert_eq!(load_listed(&builtin, dir.path(), &list).unwrap(), 0);

        sys.fail("load_module");
        let error = load_listed(&sys, dir.path(), &list)
            .unwrap_err()
            .to_string();
        assert!(error.contains("virtio_ring.ko"), "{error}");
    }
}
