"""Reading the profile's type annotations: shared by error messages and the reference doc.

Both need the same facts (which keys a section allows, what a discriminated
union's tags are, which model sits at a path), so they live in one place.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class TaggedUnion:
    """A discriminated union: members picked by the value of `discriminator`."""

    discriminator: str
    members: tuple[type[BaseModel], ...]

    def tags(self) -> list[str]:
        """Every accepted tag, in declaration order."""
        return [t for member in self.members for t in literal_values(member, self.discriminator)]

    def member(self, tag: object) -> type[BaseModel] | None:
        """The member whose discriminator accepts `tag`."""
        return next(
            (m for m in self.members if tag in literal_values(m, self.discriminator)), None
        )

    @property
    def noun(self) -> str:
        """What members are called, e.g. "execution provider"."""
        return str(getattr(self.members[0], "kind_noun", "kind"))


def literal_values(model: type[BaseModel], field_name: str) -> tuple[Any, ...]:
    """The values a Literal field accepts (empty if it is not a Literal)."""
    annotation = model.model_fields[field_name].annotation
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def unwrap(annotation: Any, discriminator: str | None = None) -> Any:
    """Strip Annotated and Optional; return a TaggedUnion for discriminated unions."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            inner, *metadata = get_args(annotation)
            for meta in metadata:
                if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                    discriminator = meta.discriminator
            annotation = inner
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
            if discriminator is not None:
                return TaggedUnion(discriminator, tuple(members))
        return annotation


def is_model(annotation: Any) -> bool:
    """Whether `annotation` is a pydantic model class."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_type(model: type[BaseModel], name: str) -> Any:
    """The unwrapped type of a model field (a TaggedUnion when the field is one)."""
    info = model.model_fields[name]
    discriminator = info.discriminator if isinstance(info.discriminator, str) else None
    return unwrap(info.annotation, discriminator)


def is_optional(annotation: Any) -> bool:
    """Whether `None` is an accepted value."""
    if get_origin(annotation) is Annotated:
        return is_optional(get_args(annotation)[0])
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(
        annotation
    )
