//! Test resources and a generic chain stage, shared by the runtime tests and the bench.
#![allow(dead_code)]

use std::marker::PhantomData;

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resource::{Resource, ResourceSpec};
use serde::{Deserialize, Serialize};

/// A number-carrying spec, one struct per type name.
pub trait Num: ResourceSpec {
    fn new(value: i64) -> Self;
    fn value(&self) -> i64;
}

macro_rules! num_types {
    ($($name:ident => $type:literal),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ResourceSpec)]
        #[resource(type = $type, namespace = "test")]
        pub struct $name {
            pub value: i64,
        }
        impl Num for $name {
            fn new(value: i64) -> Self {
                $name { value }
            }
            fn value(&self) -> i64 {
                self.value
            }
        }
    )*};
}

num_types! {
    A => "As.test.basalt.dev",
    B => "Bs.test.basalt.dev",
    C => "Cs.test.basalt.dev",
    D => "Ds.test.basalt.dev",
}

/// Reads every `I` and writes an `O` with the same id and value + 1.
pub struct Stage<I, O> {
    pub name: &'static str,
    _types: PhantomData<fn() -> (I, O)>,
}

impl<I, O> Stage<I, O> {
    pub fn new(name: &'static str) -> Self {
        Stage {
            name,
            _types: PhantomData,
        }
    }
}

#[async_trait]
impl<I: Num, O: Num> Controller for Stage<I, O> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<I>()]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<O>()]
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        for input in rt.list::<I>().await? {
            rt.put(Resource::new(input.id(), O::new(input.spec.value() + 1)))
                .await?;
        }
        Ok(Action::Done)
    }
}
