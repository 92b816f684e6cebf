"""Neural graphs: conversion of PyTorch networks, execution, permutation, batching."""
