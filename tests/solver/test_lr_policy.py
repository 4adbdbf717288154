"""Caffe's learning-rate policies, against values worked out by hand."""
import math

import pytest

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError
from netdef.schema import parse_text
from solver.lr_policy import POLICIES, LRPolicy


def test_fixed():
    policy = LRPolicy("fixed", 0.01)
    assert [policy(i) for i in (0, 1, 999999)] == [0.01, 0.01, 0.01]


def test_step_uses_integer_division():
    # base_lr * gamma ^ floor(iter / stepsize)
    policy = LRPolicy("step", 0.01, gamma=0.1, stepsize=100)
    assert policy(0) == pytest.approx(0.01, rel=1e-15)
    assert policy(99) == pytest.approx(0.01, rel=1e-15)
    assert policy(100) == pytest.approx(0.001, rel=1e-12)
    assert policy(250) == pytest.approx(0.0001, rel=1e-12)


def test_exp():
    # 0.01 * 0.99^10 = 0.009043820750088045
    policy = LRPolicy("exp", 0.01, gamma=0.99)
    assert policy(0) == 0.01
    assert policy(10) == pytest.approx(0.009043820750088045, rel=1e-14)


def test_inv():
    # 0.01 * (1 + 0.0001 * 10000)^-0.75 = 0.01 * 2^-0.75 = 0.005946035575013605
    policy = LRPolicy("inv", 0.01, gamma=0.0001, power=0.75)
    assert policy(0) == 0.01
    assert policy(10000) == pytest.approx(0.005946035575013605, rel=1e-14)


def test_multistep():
    policy = LRPolicy("multistep", 1.0, gamma=0.5, stepvalue=[10, 20, 40])
    assert [policy(i) for i in (0, 9, 10, 19, 20, 39, 40, 1000)] == \
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def test_multistep_stops_at_the_first_value_not_reached_as_caffe():
    # Caffe walks stepvalue in order: with [10, 5] nothing changes before 10.
    policy = LRPolicy("multistep", 1.0, gamma=0.5, stepvalue=[10, 5])
    assert policy(7) == 1.0
    assert policy(12) == 0.25


def test_poly():
    # 0.01 * (1 - 50/100)^2 = 0.0025; 0 at and past max_iter
    policy = LRPolicy("poly", 0.01, power=2.0, max_iter=100)
    assert policy(0) == 0.01
    assert policy(50) == pytest.approx(0.0025, rel=1e-15)
    assert policy(100) == 0.0
    assert policy(120) == 0.0


def test_sigmoid():
    # 0.01 / (1 + exp(-gamma * (iter - stepsize))) with gamma -0.1, stepsize 50
    policy = LRPolicy("sigmoid", 0.01, gamma=-0.1, stepsize=50)
    assert policy(50) == pytest.approx(0.005, rel=1e-15)
    assert policy(60) == pytest.approx(0.01 / (1 + math.e), rel=1e-14)
    assert policy(60) == pytest.approx(0.0026894142136999513, rel=1e-14)
    assert policy(10 ** 6) == 0.0  # exp would overflow: the rate is 0 there


def test_from_solver_reads_caffe_fields():
    param = parse_text('lr_policy: "step" base_lr: 0.001 gamma: 0.1 stepsize: 50000 '
                       'max_iter: 80000', caffe_pb2.SolverParameter)
    policy = LRPolicy.from_solver(param, "solver.prototxt")
    # The fields are float32 in caffe.proto, as in Caffe.
    assert policy(49999) == pytest.approx(0.001, rel=1e-6)
    assert policy(50000) == pytest.approx(0.0001, rel=1e-6)


@pytest.mark.parametrize("policy, fields, message", [
    ("stepp", {}, "unknown lr_policy 'stepp'.*did you mean 'step'"),
    ("", {}, "lr_policy is not set"),
    ("step", {"stepsize": 0}, "lr_policy 'step' needs stepsize > 0, found 0"),
    ("poly", {"max_iter": 0}, "lr_policy 'poly' needs max_iter > 0"),
])
def test_errors_name_the_solver_file(policy, fields, message):
    with pytest.raises(NetDefinitionError, match=r"my_solver\.prototxt: " + message):
        LRPolicy(policy, 0.1, source="my_solver.prototxt", **fields)


def test_every_policy_is_listed():
    assert set(POLICIES) == {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"}
