#!/usr/bin/env python3
"""Writes the tiny ONNX models the tests use (checked in beside this script;
run it again only to change them): `pip install onnx`, then
`python3 tests/models/make_models.py`.

- affine.onnx  x f32[batch, 4] -> y = 2x + 1                  (batched)
- fixed.onnx   x f32[1, 3]     -> y = x + 1                   (no batch dim)
- mask.onnx    ids i64[batch, seq], keep bool[batch, seq]
               -> out i64[batch, seq] = keep ? ids : 0        (two inputs, a
               second dynamic dim, i64 and bool)
- lookup.onnx  idx i64[batch, 1] -> y f32[batch, 1] = [10, 20, 30, 40][idx]
               (an index outside 0..4 makes ONNX Runtime fail the batch)
"""
import os
import onnx
from onnx import TensorProto as T, helper as h

HERE = os.path.dirname(os.path.abspath(__file__))


def save(name, nodes, inputs, outputs, inits=()):
    graph = h.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], producer_name="taskhost-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, name + ".onnx"))


def const(name, ty, dims, vals):
    return h.make_tensor(name, ty, dims, vals)


save("affine",
     [h.make_node("Mul", ["x", "two"], ["x2"]), h.make_node("Add", ["x2", "one"], ["y"])],
     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
     [const("two", T.FLOAT, [], [2.0]), const("one", T.FLOAT, [], [1.0])])

save("fixed",
     [h.make_node("Add", ["x", "one"], ["y"])],
     [h.make_tensor_value_info("x", T.FLOAT, [1, 3])],
     [h.make_tensor_value_info("y", T.FLOAT, [1, 3])],
     [const("one", T.FLOAT, [], [1.0])])

save("mask",
     [h.make_node("Where", ["keep", "ids", "zero"], ["out"])],
     [h.make_tensor_value_info("ids", T.INT64, ["batch", "seq"]),
      h.make_tensor_value_info("keep", T.BOOL, ["batch", "seq"])],
     [h.make_tensor_value_info("out", T.INT64, ["batch", "seq"])],
     [const("zero", T.INT64, [], [0])])

save("lookup",
     [h.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
     [h.make_tensor_value_info("idx", T.INT64, ["batch", 1])],
     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 1])],
     [const("table", T.FLOAT, [4], [10.0, 20.0, 30.0, 40.0])])
