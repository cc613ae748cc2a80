"""qtd.deadline"""
