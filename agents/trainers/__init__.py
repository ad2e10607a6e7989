"""The trainers behind ``--algo``: the protocol (:mod:`.base`) and one file per kind of trainer."""
