"""The base class of every config section: strict (unknown keys are errors) and immutable.

Pydantic does the validation so that an error names the field, the bad value and what is allowed;
`bickd/config_io.py` turns its errors into one readable line.
"""
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
