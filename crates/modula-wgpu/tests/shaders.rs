//! Every WGSL file parses and validates with naga (the compiler wgpu itself uses), its entry
//! points and bindings match what the backend binds, and each entry point still validates and
//! translates to SPIR-V once its workgroup-size override is set. Needs no GPU.

use std::collections::HashMap;

use modula_wgpu::shaders::{ALL, PARAMS_BYTES, ShaderFile};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(file: &ShaderFile) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(file.source)
        .unwrap_or_else(|e| panic!("{}: {}", file.name, e.emit_to_string(file.source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", file.name, e.emit_to_string(file.source)));
    (module, info)
}

#[test]
fn every_shader_parses_and_validates() {
    for file in ALL {
        parse(file);
    }
}

#[test]
fn entry_points_exist_and_are_compute() {
    for file in ALL {
        let (module, _) = parse(file);
        for name in file.entry_points {
            let ep = module
                .entry_points
                .iter()
                .find(|ep| ep.name == *name)
                .unwrap_or_else(|| panic!("{}: no entry point `{name}`", file.name));
            assert_eq!(
                ep.stage,
                naga::ShaderStage::Compute,
                "{}::{name}",
                file.name
            );
        }
        assert_eq!(
            module.entry_points.len(),
            file.entry_points.len(),
            "{}: entry points the backend does not know about",
            file.name
        );
    }
}

#[test]
fn bindings_match_the_backend_layout() {
    for file in ALL {
        let (module, _) = parse(file);
        let mut seen = HashMap::new();
        for (_, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            assert_eq!(binding.group, 0, "{}: only group 0 is bound", file.name);
            seen.insert(binding.binding, var.space);
        }
        assert_eq!(
            seen.len(),
            file.read_only.len() + 1,
            "{}: binding count",
            file.name
        );
        match seen.get(&0) {
            Some(naga::AddressSpace::Uniform) => {}
            other => panic!(
                "{}: binding 0 must be the uniform block, is {other:?}",
                file.name
            ),
        }
        for (i, &read_only) in file.read_only.iter().enumerate() {
            let space = seen
                .get(&(i as u32 + 1))
                .unwrap_or_else(|| panic!("{}: binding {} missing", file.name, i + 1));
            let naga::AddressSpace::Storage { access } = space else {
                panic!("{}: binding {} is not storage", file.name, i + 1);
            };
            assert_eq!(
                !access.contains(naga::StorageAccess::STORE),
                read_only,
                "{}: binding {} access",
                file.name,
                i + 1
            );
        }
    }
}

#[test]
fn params_blocks_are_64_bytes() {
    for file in ALL {
        let (module, _) = parse(file);
        let (_, var) = module
            .global_variables
            .iter()
            .find(|(_, v)| v.space == naga::AddressSpace::Uniform)
            .expect("a uniform block");
        let size = module.types[var.ty].inner.size(module.to_ctx());
        assert_eq!(u64::from(size), PARAMS_BYTES, "{}: Params size", file.name);
    }
}

#[test]
fn overrides_resolve_and_translate_to_spirv() {
    for file in ALL {
        let (module, info) = parse(file);
        let ov = module
            .overrides
            .iter()
            .find(|(_, o)| o.name.as_deref() == Some(file.workgroup_override))
            .unwrap_or_else(|| panic!("{}: no override `{}`", file.name, file.workgroup_override));
        assert!(
            ov.1.init.is_some(),
            "{}: override needs a default",
            file.name
        );
        // The backend's defaults and the smallest sizes it accepts.
        let sizes: &[f64] = if file.workgroup_override == "TILE" {
            &[16.0, 8.0]
        } else {
            &[256.0, 64.0]
        };
        for &size in sizes {
            let constants: naga::back::PipelineConstants =
                [(file.workgroup_override.to_owned(), size)]
                    .into_iter()
                    .collect();
            for name in file.entry_points {
                let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{}::{name} with {size}: {e:?}", file.name));
                let ep = resolved
                    .entry_points
                    .iter()
                    .find(|ep| ep.name == *name)
                    .expect("entry point kept");
                let expected = if file.workgroup_override == "TILE" {
                    [size as u32, size as u32, 1]
                } else {
                    [size as u32, 1, 1]
                };
                assert_eq!(ep.workgroup_size, expected, "{}::{name}", file.name);
                naga::back::spv::write_vec(
                    &resolved,
                    &resolved_info,
                    &naga::back::spv::Options::default(),
                    Some(&naga::back::spv::PipelineOptions {
                        shader_stage: naga::ShaderStage::Compute,
                        entry_point: (*name).to_owned(),
                    }),
                )
                .unwrap_or_else(|e| panic!("{}::{name} to SPIR-V: {e}", file.name));
            }
        }
    }
}
